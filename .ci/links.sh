#!/usr/bin/env bash
# Checks the relative links of README.md and docs/*.md: that each linked file
# exists (relative to the linking file) and that each anchor (`path.md#anchor`
# or `#anchor`) names a heading of its page, by GitHub's slug rules (lowercase,
# punctuation other than `-` and `_` dropped, spaces to `-`, a repeated heading
# gets `-1`, `-2`, ...). http(s)://, mailto: and links in fenced code blocks or
# inline code are skipped. Prints each broken link as `file:line: link` and
# exits 1 if there is one.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 - README.md docs/*.md <<'PY'
import os, re, sys, urllib.parse

FENCE = re.compile(r'^ {0,3}(`{3,}|~{3,})')
HEADING = re.compile(r'^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$')
CODE_SPAN = re.compile(r'(`+)(.+?)\1')
LINK = re.compile(r'!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^()\s<>]*(?:\([^()\s]*\)[^()\s<>]*)*)>?(?:\s+"[^"]*")?\s*\)')

def lines_outside_fences(path):
    """(line number, text) of the lines not inside a fenced code block."""
    fence = None
    with open(path, encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip('\n')
            m = FENCE.match(line)
            if fence is None:
                if m:
                    fence = m.group(1)
                    continue
                yield n, line
            elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) \
                    and line.strip() == m.group(1):
                fence = None

def slug(text):
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', text)   # links: their text
    text = re.sub(r'<[^>]+>', '', text)                       # inline HTML
    text = text.strip().lower()
    text = re.sub(r'[^\w\- ]', '', text)                      # \w keeps letters, digits, _
    return text.replace(' ', '-')

anchors_cache = {}
def anchors(path):
    if path not in anchors_cache:
        seen, found = {}, set()
        for _, line in lines_outside_fences(path):
            m = HEADING.match(line)
            if not m:
                continue
            s = slug(m.group(2))
            k = seen.get(s, 0)
            found.add(s if k == 0 else f'{s}-{k}')
            seen[s] = k + 1
        # Explicit HTML anchors count too.
        with open(path, encoding='utf-8') as f:
            for a in re.findall(r'<a\s+(?:name|id)="([^"]+)"', f.read()):
                found.add(a)
        anchors_cache[path] = found
    return anchors_cache[path]

broken, total, with_anchor = [], 0, 0
files = sys.argv[1:]
for path in files:
    for n, line in lines_outside_fences(path):
        # Blank out inline code so that bracketed code is no link, keeping
        # the code of a link's text (it stays inside the brackets).
        line = CODE_SPAN.sub(lambda m: 'x' * len(m.group(0)), line)
        for m in LINK.finditer(line):
            link = m.group(2)
            if not link or re.match(r'^(https?:|mailto:)', link, re.I):
                continue
            if re.match(r'^[a-z][a-z0-9+.-]*:', link, re.I):
                continue  # another scheme: not a relative link
            total += 1
            target, _, anchor = link.partition('#')
            target = urllib.parse.unquote(target)
            dest = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
            if not os.path.exists(dest):
                broken.append(f'{path}:{n}: {link}')
                continue
            if anchor:
                with_anchor += 1
                if dest.endswith('.md') and os.path.isfile(dest) \
                        and urllib.parse.unquote(anchor).lower() not in anchors(dest):
                    broken.append(f'{path}:{n}: {link}')

for b in broken:
    print(b)
if broken:
    print(f'links.sh: {len(broken)} broken of {total} relative links in {len(files)} files', file=sys.stderr)
    sys.exit(1)
print(f'links.sh: OK, {total} relative links ({with_anchor} with an anchor) in {len(files)} files')
PY
