"""Open a report page in a real headless browser and check what a reader sees: the page
renders, every image loads, and no label overlaps another on the maps (Fig 6, 7).

    apt-get install chromium          # once: Debian's package
    .venv/bin/python benchmarks/report_check.py <workdir>/reports/<run_id>/report.html \
        [--screenshot top.png] [--chromium PATH]

The page is copied to a temporary directory with a script added at its end, opened in
Chromium (`--headless --dump-dom`), and the script's findings are read back from the DOM:
each <img> and each image inside an inline SVG decoded by the browser, and on each map the
rectangles the browser gave the label texts, compared pairwise. Prints one line per image
and per map, then PASS or FAIL; exits 0 when every check passes, 1 when one fails, 2 when
Chromium is missing or the page does not load. --screenshot also saves the top of the page
as the browser drew it (1280 px wide).
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs in the page once it has loaded; writes its findings as JSON into <pre id=CHECK_ID>.
CHECK_ID = "skillrank-report-check"
CHECK_SCRIPT = """
<script>
window.addEventListener("load", () => {
  const found = {title: document.title, figures: document.querySelectorAll("section.figure").length,
                 verdict: (document.querySelector("p.verdict") || {}).textContent || "",
                 images: [], maps: []};
  for (const img of document.images) {
    found.images.push({where: img.alt, ok: img.complete && img.naturalWidth > 0,
                       width: img.naturalWidth});
  }
  // An image inside an SVG is loaded when the browser can draw it: some pixel not blank.
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 64;
  const context = canvas.getContext("2d");
  for (const image of document.querySelectorAll("svg image")) {
    let drawn = 0;
    try {
      context.clearRect(0, 0, 64, 64);
      context.drawImage(image, 0, 0, 64, 64);
      drawn = context.getImageData(0, 0, 64, 64).data.filter((v, i) => i % 4 === 3 && v > 0).length;
    } catch (e) { drawn = 0; }
    found.images.push({where: "image inside the SVG of " + image.closest("section").id,
                       ok: drawn > 0, width: Math.round(image.getBBox().width)});
  }
  for (const section of document.querySelectorAll("section.figure")) {
    const texts = [...section.querySelectorAll(`g[id^="${section.id}-label-"] text`)];
    if (!texts.length) continue;
    const boxes = texts.map(t => t.getBoundingClientRect());
    const overlaps = [];
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i], b = boxes[j];
        if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) {
          overlaps.push([texts[i].textContent, texts[j].textContent]);
        }
      }
    }
    found.maps.push({id: section.id, labels: texts.length, overlaps: overlaps,
                     empty: boxes.filter(b => b.width === 0 || b.height === 0).length});
  }
  const out = document.createElement("pre");
  out.id = "@ID@";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});
</script>
""".replace("@ID@", CHECK_ID)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path, help="a report.html written by the report stage")
    parser.add_argument("--chromium", help="the browser (default: chromium on PATH)")
    parser.add_argument("--screenshot", type=Path, help="save the top of the page here (PNG)")
    args = parser.parse_args()
    browser = args.chromium or shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("report_check: no chromium on PATH: apt-get install chromium", file=sys.stderr)
        return 2
    if not args.page.is_file():
        print(f"report_check: {args.page}: no such file", file=sys.stderr)
        return 2
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        text = args.page.read_text(encoding="utf-8")
        page.write_text(text.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
        dom = subprocess.run(
            [*flags, "--virtual-time-budget=30000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=300,
        ).stdout  # fmt: skip
        if args.screenshot:
            subprocess.run(
                [*flags, "--window-size=1280,2400", f"--screenshot={args.screenshot.resolve()}",
                 args.page.resolve().as_uri()],
                capture_output=True, timeout=300, check=True,
            )  # fmt: skip
    start = dom.find(f'<pre id="{CHECK_ID}">')
    if start < 0:
        print("report_check: the page did not load (no findings in the DOM)", file=sys.stderr)
        return 2
    found = json.loads(html.unescape(dom[start:].split(">", 1)[1].split("</pre>", 1)[0]))
    failures = []
    print(f"page: {found['title']!r}, {found['figures']} figures")
    print(f"first paragraph: {found['verdict'][:160]}...")
    if not found["verdict"]:
        failures.append("no verdict paragraph")
    for image in found["images"]:
        print(
            f"  image {'ok  ' if image['ok'] else 'FAIL'} {image['width']:>5} px  {image['where']}"
        )
        if not image["ok"]:
            failures.append(f"image not loaded: {image['where']}")
    if not found["images"]:
        failures.append("no images")
    for drawn in found["maps"]:
        print(
            f"  map {drawn['id']}: {drawn['labels']} labels, {len(drawn['overlaps'])} overlapping"
            f" pairs, {drawn['empty']} drawn empty"
        )
        for a, b in drawn["overlaps"]:
            print(f"    overlap: {a!r} and {b!r}")
        if drawn["overlaps"] or drawn["empty"]:
            failures.append(f"labels overlap or are empty on {drawn['id']}")
    if len(found["maps"]) < 2:
        failures.append(f"{len(found['maps'])} maps with labels, expected 2")
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
