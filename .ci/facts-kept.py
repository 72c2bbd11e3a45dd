#!/usr/bin/env python3
"""Checks that no fact of the old README was lost when it was split into docs/.

The old README is read from git (`git show 02e781c:README.md`, or the commit
given as the first argument); the new set is README.md and docs/*.md
(docs/architecture.md included: its code map supersedes the README's).

A "fact token" of the old README is: every backticked span, every line of a
fenced code block, every number with a unit (or alone, of 2+ digits), every
ALL_CAPS name, and every path-like token. Each must appear somewhere in the
new set (whitespace normalised). Tokens of old paths that have since moved are
listed apart, with where they went, and only count as missing if their new
name is missing too.

    python3 .ci/facts-kept.py [COMMIT] [--code-map]

`--code-map` also lists, row by row, the tokens of the old README's "Code
map" section that docs/architecture.md lacks.
"""
import glob, re, subprocess, sys

args = [a for a in sys.argv[1:] if not a.startswith('--')]
COMMIT = args[0] if args else '02e781c'
CODE_MAP = '--code-map' in sys.argv

# Paths that moved since the old README was written: old token -> new token.
MOVED = {
    'benches/orchestrator.rs': 'benches/orchestrator/',
    'src/config.rs': 'src/config/',
    'src/reconcile.rs': 'src/reconcile/',
    'src/session.rs': 'src/domain/',
    'token.rs': 'src/domain/',   # src/gateway/token.rs -> src/domain/token.rs
}

UNITS = (r'req/s|ms|s|MiB|KiB|GiB|KB|MB|GB|x|%|bits|bit|minutes?|cores?|'
         r'hex digits|runners|rows|samples|clients|sessions|containers|times|'
         r'rounds|kill points|instructions|headers|processes')
NUMBER = re.compile(r'(?<![\w.,])(\d+(?:[.,]\d+)*)(?:\s?(' + UNITS + r'))?(?![\w])')
CAPS = re.compile(r'(?<![\w-])[A-Z][A-Z0-9_]{2,}(?![\w-])')
PATH = re.compile(r'(?<![\w./-])(?:[\w.-]+/)+[\w.*<>-]*|(?<![\w/-])[\w-]+\.(?:rs|sh|md|yml|toml|html|py|sql|json|db|lock)(?![\w])')
SPAN = re.compile(r'(`+)\s*(.+?)\s*\1')
FENCE = re.compile(r'^ {0,3}(`{3,}|~{3,})')

def norm(s):
    return re.sub(r'\s+', ' ', s).strip()

def split_fences(text):
    """(prose with fenced blocks removed, [lines of fenced blocks])."""
    prose, code, fence = [], [], None
    for line in text.split('\n'):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            prose.append('')
        elif fence is not None and m and line.strip().startswith(fence[0] * len(fence)):
            fence = None
            prose.append('')
        elif fence is not None:
            if line.strip():
                code.append(norm(line))
            prose.append('')
        else:
            prose.append(line)
    return '\n'.join(prose), code

def tokens(text):
    """The fact tokens of a piece of markdown, in order, without repeats."""
    prose, code = split_fences(text)
    out = []
    def add(kind, tok):
        tok = norm(tok)
        if tok and (kind, tok) not in out:
            out.append((kind, tok))
    for line in code:
        add('code line', line)
    flat = norm(prose)
    for m in SPAN.finditer(flat):
        add('span', m.group(2))
    unquoted = SPAN.sub(lambda m: ' ' + m.group(2) + ' ', flat)
    for m in NUMBER.finditer(unquoted):
        num, unit = m.group(1), m.group(2)
        if unit or len(num.replace(',', '').replace('.', '')) >= 2:
            add('number', num + (' ' + unit if unit else ''))
    for m in CAPS.finditer(flat):
        add('name', m.group(0))
    for m in PATH.finditer(flat):
        tok = m.group(0).rstrip('.')
        if '/' in tok and not re.search(r'[A-Za-z]', tok):
            continue  # 1/4 and such are numbers, not paths
        if tok.count('/') == 1 and tok.startswith('/') is False and len(tok) < 4:
            continue
        add('path', tok)
    return out

def present(kind, tok, corpus, corpus_nospace):
    if kind == 'number':
        num, _, unit = tok.partition(' ')
        pat = r'(?<![\w.,])' + re.escape(num) + (r'\s?' + re.escape(unit) if unit else '') + r'(?![\d])'
        return re.search(pat, corpus) is not None
    if kind == 'span':
        return ('`' + tok + '`') in corpus or tok in corpus
    if kind == 'code line':
        return tok in corpus
    return tok in corpus

def load_new():
    files = ['README.md'] + sorted(glob.glob('docs/*.md'))
    return norm('\n'.join(open(f, encoding='utf-8').read() for f in files))

old = subprocess.run(['git', 'show', f'{COMMIT}:README.md'], check=True,
                     capture_output=True, text=True).stdout
corpus = load_new()
# The deleted "Code map" section: its facts are superseded by
# docs/architecture.md; a token found only there, and missing from the new
# set, is listed for architecture.md's owner, not counted as lost.
start = old.index('\n## Code map')
end = old.index('\n## ', start + 5)
outside_map = {t for t in tokens(old[:start] + old[end:])}
missing, moved, map_only = [], [], []
for kind, tok in tokens(old):
    if present(kind, tok, corpus, None):
        continue
    hit = next((o for o in MOVED if o in tok), None)
    if hit and MOVED[hit] in corpus:
        moved.append((kind, tok, MOVED[hit]))
    elif (kind, tok) not in outside_map:
        map_only.append((kind, tok))
    else:
        missing.append((kind, tok))

total = len(tokens(old))
for kind, tok, new in moved:
    print(f'moved:   {kind}: {tok!r} -> {new!r} (an outdated path, fixed)')
for kind, tok in map_only:
    print(f'code map only, not in docs/architecture.md: {kind}: {tok!r}')
for kind, tok in missing:
    print(f'MISSING: {kind}: {tok!r}')

if CODE_MAP:
    sec = old[start:end]
    arch = norm(open('docs/architecture.md', encoding='utf-8').read())
    print('\nOld code map rows: tokens docs/architecture.md lacks')
    for row in sec.split('\n'):
        if not row.startswith('| `'):
            continue
        lack = [t for k, t in tokens(row) if not present(k, t, arch, None)]
        if lack:
            print(f'  {row.split("|")[1].strip()}: ' + ', '.join(lack))

print(f'facts-kept.py: {total} fact tokens of the old README ({COMMIT}); '
      f'{total - len(missing) - len(moved) - len(map_only)} found, {len(moved)} moved paths, '
      f'{len(map_only)} only in the deleted code map (for architecture.md), {len(missing)} missing')
sys.exit(1 if missing else 0)
