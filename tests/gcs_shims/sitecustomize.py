"""Test-only shims for talking to fake-gcs-server (see tests/gcs_emulator.py); loaded by every Python
process whose PYTHONPATH holds this folder, so Beam's worker processes get them too. Active only while
STORAGE_EMULATOR_HOST is set."""

import os

if os.environ.get("STORAGE_EMULATOR_HOST"):
    from google.cloud.storage import batch as _batch

    class _PartWithId(_batch.MIMEApplicationHTTP):
        """fake-gcs-server drops batch parts without a Content-ID (google-cloud-storage 3 sends none)."""

        _count = 0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            type(self)._count += 1
            self["Content-ID"] = f"<item{type(self)._count}>"

    _batch.MIMEApplicationHTTP = _PartWithId

    from apache_beam.internal.gcp import auth as _auth

    # anonymous at once: the real lookup retries for ~30 s before falling back to anonymous access
    _auth._Credentials._get_service_credentials = staticmethod(lambda options: None)
