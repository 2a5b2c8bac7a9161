#!/usr/bin/env bash
# Install the JavaScript the rendered book needs from the npm registry and copy it into
# book/_static/vendor/, so that no page loads anything from a CDN:
#   - MathJax 3 (tex-svg: SVG output, no web fonts to fetch) typesets the maths;
#   - require.js + @jupyter-widgets/html-manager (embed-amd) render stored widget state.
# The npm cache lives in .cache/book-assets (hidden, so Sphinx never scans it).
# A stamp records the versions: re-runs are instant unless a version below changes.
set -euo pipefail

MATHJAX_VERSION=3.2.2
HTML_MANAGER_VERSION=1.0.15   # @jupyter-widgets/html-manager for ipywidgets 8.1
REQUIREJS_VERSION=2.3.8

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$root/.cache/book-assets"
vendor="$root/book/_static/vendor"
want="mathjax@$MATHJAX_VERSION @jupyter-widgets/html-manager@$HTML_MANAGER_VERSION requirejs@$REQUIREJS_VERSION"
stamp="$vendor/.versions"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "book assets up to date ($want)"
    exit 0
fi

if ! command -v npm >/dev/null; then
    echo "error: npm is needed to fetch MathJax and the widget manager (apt-get install -y npm)" >&2
    exit 1
fi

mkdir -p "$cache"
# shellcheck disable=SC2086  # word splitting of $want is intended
npm install --prefix "$cache" --no-save --no-package-lock --no-fund --no-audit \
    --ignore-scripts --loglevel=error $want

nm="$cache/node_modules"
rm -rf "$vendor"
mkdir -p "$vendor/requirejs" "$vendor/html-manager"
cp -r "$nm/mathjax/es5" "$vendor/mathjax"
cp "$nm/mathjax/LICENSE" "$vendor/mathjax/LICENSE"
cp "$nm/requirejs/require.js" "$nm/requirejs/package.json" "$vendor/requirejs/"
# embed-amd.js loads its fonts from the folder it was loaded from: copy dist/ whole, minus maps.
find "$nm/@jupyter-widgets/html-manager/dist" -maxdepth 1 -type f ! -name '*.map' \
    -exec cp {} "$vendor/html-manager/" \;
cp "$nm/@jupyter-widgets/html-manager/package.json" "$vendor/html-manager/"

for f in mathjax/tex-svg.js requirejs/require.js html-manager/embed-amd.js; do
    [[ -s "$vendor/$f" ]] || { echo "error: $vendor/$f missing after npm install" >&2; exit 1; }
done
echo "$want" > "$stamp"
echo "book assets installed into book/_static/vendor ($want)"
