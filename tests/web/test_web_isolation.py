"""The web process stays small: no TensorFlow, no worker modules, after create_app and requests.
Checked in a fresh interpreter, since other tests in this process may import TensorFlow."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from shared.config import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def test_web_never_imports_tensorflow_or_worker(settings: Settings, nih_full_images: list[Path]) -> None:
    script = textwrap.dedent(f"""
        import io, sys
        from shared.config import load_settings
        from tests.web.support import make_app, upload
        settings = load_settings({{"XRAY_VAR_DIR": {str(settings.var_dir)!r}, "XRAY_QUEUE": "xray.test.isolation"}})
        app, producer = make_app(settings)
        client = app.test_client()
        png = open({str(nih_full_images[0])!r}, "rb").read()
        body = upload(client, [(png, "a.png")]).get_json()
        study = body["accepted"][0]["id"]
        import numpy as np
        from shared.gradcam import cam_sheet_png  # what the worker stores; the web renders the layer
        from shared.models import Finding
        from shared.storage import LocalStorage
        from tests.web.support import session_for
        with session_for(settings) as session:
            path = LocalStorage(settings.storage_dir).put_cam_sheet(study, cam_sheet_png({{"Mass": np.eye(7)}}))
            session.add(Finding(study_id=study, label="Mass", probability=0.9, threshold=0.5, positive=True,
                                heatmap_path=path))
            session.commit()
        assert client.get(f"/studies/{{study}}/heatmaps/Mass.png").status_code == 200
        for url in ["/", "/worklist", f"/studies/{{study}}", f"/studies/{{study}}/image",
                    f"/api/v1/studies/{{study}}", f"/api/v1/batches/{{body['batch_id']}}",
                    "/api/v1/worklist", "/healthz"]:
            assert client.get(url).status_code in (200, 503), url
        assert producer.sent == [("worker.tasks.diagnose_study", [study])]
        heavy = sorted(m for m in sys.modules
                       if m.split(".")[0] in {{"tensorflow", "keras", "worker", "training"}})
        print("HEAVY", heavy)
        sys.exit(1 if heavy else 0)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HEAVY []" in result.stdout
