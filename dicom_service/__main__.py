"""``python -m dicom_service``."""

import sys

from dicom_service.cli import main

sys.exit(main())
