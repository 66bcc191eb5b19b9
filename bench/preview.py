#!/usr/bin/env python
"""Milliseconds of the source preview for a 1 MB sample, beside the baseline of reading the same sample.

Writes a 1 MB logger-style CSV (header with units, an ISO time, six numbers with sentinels, a status
word), then times, median of --repeat runs each:

* baseline: ``pandas.read_csv`` of the same bytes (parsing it once, no proposals);
* the preview: ``collection.services.preview.preview_source`` with the sample as an upload: decoding,
  proposals (delimiter, header, names and units normalised by pint, time, sentinels, channels), the
  configuration validated, the first rows parsed and each value judged. No database is involved.

    .venv/bin/python bench/preview.py --bytes 1000000 --repeat 7
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sample(size: int) -> bytes:
    import numpy as np

    rng = np.random.default_rng(7)
    header = "time,Air Temperature [deg C],Rel Humidity (%),Pressure (hPa),Wind [m/s],Rain (mm),Battery [V],status\n"
    lines = [header]
    total, i = len(header), 0
    while total < size:
        values = rng.normal(20, 5, 6)
        if i % 97 == 0:
            values[1] = -9999
        line = (
            f"2024-01-{1 + i // 86400 % 28:02d}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d},"
            + ",".join(f"{v:.2f}" for v in values)
            + (",OK\n" if i % 5 else ",WARN\n")
        )
        lines.append(line)
        total += len(line)
        i += 1
    return "".join(lines).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("DAQBROKER_DATA_DIR", tmp)
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "daqbroker_site.settings")
        import django

        django.setup()
        import pandas as pd

        from collection.services.preview import preview_source

        data = sample(args.bytes)
        lines = data.count(b"\n")

        def baseline() -> None:
            pd.read_csv(io.BytesIO(data))

        def preview() -> None:
            result = preview_source(None, "file", {}, upload=data)  # type: ignore[arg-type]
            assert result["rows"] and result["proposal"]["channels"], result

        timings = {}
        for name, run in (("pandas.read_csv (baseline)", baseline), ("preview_source", preview)):
            run()  # warm up (imports, pint's registry)
            seconds = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                run()
                seconds.append(time.perf_counter() - start)
            timings[name] = statistics.median(seconds)
        print(f"sample: {len(data):,} bytes, {lines:,} lines; median of {args.repeat}")
        for name, seconds in timings.items():
            print(f"  {name:<28} {seconds * 1000:8.1f} ms")
        base = timings["pandas.read_csv (baseline)"]
        print(f"  ratio preview / baseline     {timings['preview_source'] / base:8.2f}")


if __name__ == "__main__":
    main()
