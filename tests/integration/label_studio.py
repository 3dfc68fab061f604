"""The local Label Studio server the integration tests drive (shared with the demo command)."""

from glus_backend.local_label_studio import (  # noqa: F401
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    LabelStudioServer,
    ensure_label_studio,
    free_port,
    ls_venv,
)
