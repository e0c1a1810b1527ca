"""axe-core's accessibility audit, run inside a page the browser tests opened (WCAG 2.1 A and AA rules).

axe-core comes from npm, pinned by tests/e2e/axe/package-lock.json (scripts/install_test_services.sh installs it,
as `make test` does). It is injected through WebDriver, which a page's Content-Security-Policy does not govern, so
the pages are audited under the policy they are served with.
"""

from __future__ import annotations

from pathlib import Path


from tests.node_packages import require_installed

AXE_DIR = Path(__file__).resolve().parent / "axe"
AXE_SCRIPT = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]  # the rules of WCAG 2.1 level AA that axe can check

RUN = """
var context = arguments[0].length ? {exclude: arguments[0]} : document;
return axe.run(context, {runOnly: {type: 'tag', values: arguments[1]}, resultTypes: ['violations']})
  .then(function (result) {
    return result.violations.map(function (v) {
      return {rule: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 5).map(function (n) {
        return n.target.join(' ') + ': ' + (n.failureSummary || '').replace(/\\s+/g, ' ').slice(0, 300);
      })};
    });
  });
"""


class Axe:
    """axe-core, ready to run in whatever page a WebDriver session shows."""

    def __init__(self, source: str):
        self.source = source

    @classmethod
    def installed(cls) -> "Axe":
        """axe-core's script, or a skip (no npm to install it) / failure (npm there, not installed) saying why."""
        require_installed(AXE_SCRIPT, AXE_DIR, "axe-core")
        return cls(AXE_SCRIPT.read_text(encoding="utf-8"))

    def violations(self, browser, exclude: tuple[str, ...] = ()) -> list[dict]:
        """The WCAG 2.1 A/AA violations axe finds in the page the browser shows now (outside ``exclude``, CSS
        selectors), each with its rule, impact and up to five of the elements, named."""
        if not browser.execute("return typeof window.axe === 'object';"):
            browser.execute(self.source + "\nreturn true;")
        return browser.execute(RUN, [[css] for css in exclude], WCAG_21_AA)

    @staticmethod
    def describe(found: list[dict]) -> str:
        return "\n".join(f"{v['rule']} ({v['impact']}): {v['help']}\n    " + "\n    ".join(v["nodes"])
                         for v in found)
