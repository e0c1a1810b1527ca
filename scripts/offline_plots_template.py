"""Write .dvc/offline_plots.html: DVC's plot page with Vega, Vega-Lite and Vega-Embed inlined.

DVC's default page loads the three libraries from a CDN, so ``dvc plots show``
draws nothing offline. ``.dvc/config`` names this template (``plots.html_template``);
it has DVC's ``{plot_divs}`` placeholder and no ``{scripts}`` one, so DVC adds no
CDN tag, and the page it writes works from disk, anywhere.

The libraries are the versions DVC's renderer targets (dvc_render/vega.py),
fetched as npm package tarballs and checked against the sha512 integrity the
npm registry published for them (pinned below). Rerun after changing a pin:

    python scripts/offline_plots_template.py      # needs npm; rewrites .dvc/offline_plots.html
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / ".dvc" / "offline_plots.html"

# package -> (version, the npm registry's sha512 integrity of its tarball, the UMD build inlined)
PINNED = {
    "vega": ("5.20.2",
             "sha512-qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
             "build/vega.min.js"),
    "vega-lite": ("5.2.0",
                  "sha512-Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
                  "build/vega-lite.min.js"),
    "vega-embed": ("6.18.2",
                   "sha512-wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
                   "build/vega-embed.min.js"),
}

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Shelfcast: Vega, Vega-Lite and Vega-Embed inlined (scripts/offline_plots_template.py), no CDN -->
{libraries}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def library_source(name: str, version: str, integrity: str, member: str, workdir: Path) -> str:
    """The UMD build of one pinned package, from its npm tarball after checking the tarball's integrity."""
    packed = subprocess.run(["npm", "pack", f"{name}@{version}", "--pack-destination", str(workdir)],
                            capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    tarball = workdir / packed
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != integrity:
        raise SystemExit(f"offline_plots_template: {name}@{version}: tarball integrity {digest} is not the pinned "
                         f"{integrity}")
    with tarfile.open(tarball) as archive:
        source = archive.extractfile(f"package/{member}").read().decode("utf-8")
    if "</script" in source.lower():
        raise SystemExit(f"offline_plots_template: {name}: the build contains '</script', it cannot be inlined")
    return source


def render(sources: dict[str, str]) -> str:
    blocks = [f'    <script type="text/javascript">/* {name}@{PINNED[name][0]} */\n{sources[name]}\n    </script>'
              for name in PINNED]
    return PAGE.format(libraries="\n".join(blocks))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        sources = {name: library_source(name, version, integrity, member, Path(tmp))
                   for name, (version, integrity, member) in PINNED.items()}
    page = render(sources)
    partial = TEMPLATE.with_suffix(".html.part")
    partial.write_text(page, encoding="utf-8")
    partial.replace(TEMPLATE)
    print(f"offline_plots_template: wrote {TEMPLATE.relative_to(REPO)} ({len(page):,} bytes: "
          + ", ".join(f"{n}@{v[0]}" for n, v in PINNED.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
