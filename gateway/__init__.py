"""The hospital network's way in: a DICOM receiver (C-ECHO, C-STORE) that hands each image to the
same intake as an upload (`shared.intake`)."""
