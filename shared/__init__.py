"""Code that web, worker and training share. Imports nothing from those rooms."""
