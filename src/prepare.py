"""Prepare a raw dataset release for metareid, or check a prepared folder.

python src/prepare.py casiab --raw GaitDatasetB-silh --out data/CASIA-B-pkl --workers 8
python src/prepare.py casiab --check data/CASIA-B-pkl
python src/prepare.py casiab --pack data/CASIA-B-pkl   # packed store (or --packed when preparing)
python src/prepare.py --help   # all datasets and options
"""

import sys

from metareid.prepare import main

if __name__ == "__main__":
    sys.exit(main())
