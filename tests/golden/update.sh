#!/bin/sh
# Regenerates the golden files under tests/golden/ from the renderers (the
# same code `piha render` and the agent run), with fixed fake secrets so the
# goldens never change with `piha init`'s random ones. Review the diff, then
# commit it. Never edit the goldens by hand.
set -eu
cd "$(dirname "$0")/../.."
PIHA_UPDATE_GOLDEN=1 cargo test -p piha --test render_golden -- --exact rendered_files_match_the_goldens
git status --short tests/golden 2>/dev/null || true
