"""Convert the raw McAuley Amazon 2014 files into RecBole atomic files.

Inputs (the 2014 release of the Amazon product data by Julian McAuley; users download it
themselves, see ``docs/datasets.md``):

* ``reviews_<Category>_5.json.gz``: one JSON object per line (``reviewerID``, ``asin``,
  ``unixReviewTime``, ...), already a 5-core; or ``ratings_<Category>.csv``: ``user,item,
  rating,timestamp`` without a header, not filtered (k-core filtering is applied, 5 by default);
* ``meta_<Category>.json.gz``: one record per line, in the 2014 dump a Python dict literal
  (single quotes), parsed with :func:`json.loads` first and :func:`ast.literal_eval` as the
  fallback.

Output, in the RecBole ``data_path`` layout ``<output_dir>/<name>/<name>.inter`` and
``<name>.item`` (the schema of the ``amazon-beauty`` development dataset)::

    user_id:token  item_id:token  timestamp:float
    item_id:token  title:token_seq  brand:token  categories:token_seq  price:float
                   sales_rank:float  sales_type:token

Conventions (inferred from the reference ``amazon-beauty`` files, see ``docs/datasets.md``):

* users appear in the order of their first interaction in the raw file, each user's
  interactions in one block, sorted by ``unixReviewTime`` with a *stable* sort (ties keep
  the raw file's order, which in the ASIN-sorted 2014 files is ascending ASIN);
* ``timestamp`` = ``unixReviewTime + i`` for the i-th (0-based) interaction of the user,
  written as an integer, so RecBole's stable time sort reproduces the per-user order;
* the ``.item`` file holds exactly the items of the interactions, in order of first
  appearance in the ``.inter`` file; items absent from the metadata get an empty row;
* ``title``: the raw title, whitespace runs (tabs, newlines) collapsed to single spaces,
  HTML entities kept as they are in the dump;
* ``brand`` / ``sales_type`` tokens and each category name: whitespace runs replaced by
  ``_``; ``categories`` is one category path, its names separated by spaces: the first path
  whose top-level category is the dataset's main category (by default the top-level
  category shared by most items), else the first path;
* ``price`` / ``sales_rank`` as Python floats (``12.0``, ``344222.0``); ``sales_type`` /
  ``sales_rank`` from the first entry of the ``salesRank`` dict;
* a double quote in a text field is written as ``&quot;`` (the dump's own encoding), since
  RecBole reads atomic files with pandas, where a field starting with ``"`` would be taken
  as a quoted field;
* missing values are empty fields.

Command line::

    python -m recbole_semprune.data.amazon --reviews reviews_Beauty_5.json.gz \\
        --meta meta_Beauty.json.gz --output dataset/ --name amazon-beauty
"""

import argparse
import ast
import csv
import gzip
import json
import math
import os
import re
import sys
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass, field

from recbole_semprune import validate

INTER_HEADER = ("user_id:token", "item_id:token", "timestamp:float")
ITEM_HEADER = (
    "item_id:token",
    "title:token_seq",
    "brand:token",
    "categories:token_seq",
    "price:float",
    "sales_rank:float",
    "sales_type:token",
)
DEFAULT_RATINGS_KCORE = 5
DEFAULT_REVIEWS_KCORE = 0

_GZIP_MAGIC = b"\x1f\x8b"
_PROGRESS_EVERY = 4096
# Cheap look-up of a meta record's asin, so records of items that are not in the
# interactions are skipped without a full (slow) literal_eval.
_ASIN_RE = re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']""")


class ConversionError(ValueError):
    """The inputs cannot be converted (bad arguments or bad raw data)."""


class BadLineError(ConversionError):
    """A line of a raw file could not be parsed."""

    def __init__(self, path, line_no, reason):
        self.path = str(path)
        self.line_no = line_no
        self.reason = reason
        super().__init__(
            f"{self.path}, line {line_no}: {reason} "
            "(pass --skip_bad_lines / skip_bad_lines=True to skip such lines)"
        )


@dataclass
class ConversionSummary:
    """What :func:`convert_amazon` wrote."""

    name: str
    inter_file: str
    item_file: str
    users: int
    items: int
    interactions: int
    items_with_title: int
    items_without_meta: int = 0
    raw_interactions: int = 0
    kcore: int = 0
    main_category: str = ""
    skipped_lines: dict = field(default_factory=dict)

    def format(self):
        lines = [
            f"dataset {self.name}:",
            f"  users:            {self.users:,}",
            f"  items:            {self.items:,}",
            f"  interactions:     {self.interactions:,}"
            + (
                f" (of {self.raw_interactions:,} read, {self.kcore}-core)"
                if self.kcore > 1
                else ""
            ),
            f"  items with title: {self.items_with_title:,}",
        ]
        if self.items_without_meta:
            lines.append(f"  items without metadata: {self.items_without_meta:,}")
        if self.main_category:
            lines.append(f"  main category:    {self.main_category}")
        for path, count in self.skipped_lines.items():
            if count:
                lines.append(f"  skipped {count:,} bad line(s) of {path}")
        lines.append(f"  wrote {self.inter_file}")
        lines.append(f"  wrote {self.item_file}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- reading


def _iter_lines(path, desc, show_progress):
    """Yield ``(line_no, text)`` for the non-blank lines of a plain or gzipped file.

    Lines are decoded one by one, so a line that is not UTF-8 is reported as a bad line
    (``text`` is then ``None``) instead of failing the whole read.
    """
    raw = open(path, "rb")
    try:
        is_gzip = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw
        bar = None
        if show_progress:
            from tqdm import tqdm

            bar = tqdm(
                total=os.path.getsize(path),
                desc=desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
            )
        done = 0
        line_no = 0
        try:
            for line_no, data in enumerate(stream, start=1):
                if bar is not None and line_no % _PROGRESS_EVERY == 0:
                    pos = raw.tell()
                    bar.update(pos - done)
                    done = pos
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    yield line_no, None
                    continue
                if text.strip():
                    yield line_no, text
        except (OSError, EOFError, zlib.error) as exc:
            raise ConversionError(
                f"{path}: cannot read past line {line_no}: "
                + ("the file is truncated or not valid gzip" if is_gzip else "read error")
                + f" ({exc})"
            ) from exc
        finally:
            if bar is not None:
                bar.update(max(0, bar.total - done))
                bar.close()
    finally:
        raw.close()


def parse_record(text):
    """Parse one line of a 2014 file: strict JSON, else a Python dict literal."""
    try:
        record = json.loads(text)
    except ValueError:
        try:
            record = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
            raise ValueError(
                f"neither JSON nor a Python literal ({type(exc).__name__}: {exc})"
            ) from None
    if not isinstance(record, dict):
        raise ValueError(f"expected an object/dict, got {type(record).__name__}")
    return record


def _check_id(value, what):
    if not isinstance(value, str):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        else:
            raise ValueError(f"{what} is missing or not a string")
    value = value.strip()
    if not value:
        raise ValueError(f"{what} is empty")
    if any(ch.isspace() for ch in value):
        raise ValueError(f"{what} {value!r} contains whitespace")
    return value


def _check_time(value, what):
    if isinstance(value, bool):
        raise ValueError(f"{what} is not a number")
    if isinstance(value, str):
        value = value.strip()
        try:
            value = int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{what} {value!r} is not a number") from None
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"{what} {value!r} is not a whole number of seconds")
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"{what} is missing or not a number")
    return value


class _BadLines:
    """Either raises on a bad line or counts it, per file."""

    def __init__(self, skip):
        self.skip = skip
        self.counts = {}

    def handle(self, path, line_no, reason):
        if not self.skip:
            raise BadLineError(path, line_no, reason)
        self.counts[str(path)] = self.counts.get(str(path), 0) + 1


def _read_interactions(path, bad, what, parse, show_progress):
    """``parse(text) -> (user, item, time)`` of every good line; a line that is not UTF-8 or
    that ``parse`` rejects with ValueError goes to ``bad``."""
    inters = []
    for line_no, text in _iter_lines(path, f"reading {what}", show_progress):
        try:
            if text is None:
                raise ValueError("not valid UTF-8")
            inters.append(parse(text))
        except ValueError as exc:
            bad.handle(path, line_no, str(exc))
    return inters


def _review_interaction(text):
    record = parse_record(text)
    return (_check_id(record.get("reviewerID"), "reviewerID"),
            _check_id(record.get("asin"), "asin"),
            _check_time(record.get("unixReviewTime"), "unixReviewTime"))


def _rating_interaction(text):
    try:
        row = next(csv.reader([text.strip()]))
    except csv.Error as exc:
        raise ValueError(f"not a csv row ({exc})") from None
    if len(row) != 4:
        raise ValueError(f"expected 4 fields user,item,rating,timestamp, got {len(row)}")
    user, item = _check_id(row[0], "user"), _check_id(row[1], "item")
    try:
        float(row[2])
    except ValueError:
        raise ValueError(f"rating {row[2]!r} is not a number") from None
    return user, item, _check_time(row[3], "timestamp")


def read_reviews(path, bad, show_progress=False):
    """Interactions ``(user, item, unixReviewTime)`` of a reviews json file, in file order."""
    return _read_interactions(path, bad, "reviews", _review_interaction, show_progress)


def read_ratings(path, bad, show_progress=False):
    """Interactions ``(user, item, timestamp)`` of a ``user,item,rating,timestamp`` csv."""
    return _read_interactions(path, bad, "ratings", _rating_interaction, show_progress)


def read_meta(path, wanted, bad, show_progress=False):
    """The meta records (dicts) of the items in ``wanted``, first record per asin wins.

    A line whose asin can be read cheaply and is not wanted is skipped unparsed, so bad
    lines are only reported for the records that matter (and for lines without an asin).
    """
    records = {}
    for line_no, text in _iter_lines(path, "reading meta", show_progress):
        if text is None:
            bad.handle(path, line_no, "not valid UTF-8")
            continue
        quick = _ASIN_RE.search(text)
        if quick is not None and quick.group(1) not in wanted:
            continue
        try:
            record = parse_record(text)
            asin = _check_id(record.get("asin"), "asin")
        except ValueError as exc:
            bad.handle(path, line_no, str(exc))
            continue
        if asin in wanted and asin not in records:
            records[asin] = record
    return records


# --------------------------------------------------------------------------- processing


def kcore_filter(inters, k):
    """Keep the interactions whose user and item both have at least ``k`` of them.

    Repeated until stable (dropping users can push items below ``k`` and back). The order
    of the kept interactions is unchanged. ``k <= 1`` keeps everything.
    """
    if k <= 1:
        return list(inters)
    inters = list(inters)
    while True:
        users = Counter(u for u, _, _ in inters)
        items = Counter(i for _, i, _ in inters)
        kept = [r for r in inters if users[r[0]] >= k and items[r[1]] >= k]
        if len(kept) == len(inters):
            return kept
        inters = kept


def order_interactions(inters):
    """Rows ``(user, item, timestamp)`` in the output order (see the module docstring)."""
    by_user = {}
    for user, item, stamp in inters:
        by_user.setdefault(user, []).append((stamp, item))
    rows = []
    for user, seq in by_user.items():
        seq.sort(key=lambda pair: pair[0])  # stable: ties keep the raw file's order
        for i, (stamp, item) in enumerate(seq):
            rows.append((user, item, stamp + i))
    return rows


def _clean_text(value):
    return value.replace('"', "&quot;")


def _join_words(value, separator):
    """The words of ``value`` (any object; None -> empty) joined by ``separator``."""
    return "" if value is None else _clean_text(separator.join(str(value).split()))


def format_title(value):
    """Words separated by single spaces (tabs, newlines, runs of spaces collapsed)."""
    return _join_words(value, " ")


def format_token(value):
    """A single token: whitespace runs replaced by ``_``."""
    return _join_words(value, "_")


def format_float(value):
    """Python's float repr (``12.0``, ``3.04``); empty when missing or not a number."""
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, str):
        value = value.strip().lstrip("$").replace(",", "")
        if not value:
            return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(number):
        return ""
    return repr(number)


def _category_paths(record):
    """The record's category paths as lists of raw (non-empty) names."""
    cats = record.get("categories")
    if not isinstance(cats, (list, tuple)):
        return []
    if cats and all(isinstance(c, str) for c in cats):  # a single flat path
        cats = [cats]
    paths = []
    for path in cats:
        if not isinstance(path, (list, tuple)):
            continue
        names = [c for c in path if isinstance(c, str) and c.split()]
        if names:
            paths.append(names)
    return paths


def infer_main_category(records):
    """The top-level category that the most items have a category path in."""
    counts = Counter()
    for record in records:
        counts.update({" ".join(path[0].split()) for path in _category_paths(record)})
    if not counts:
        return ""
    return counts.most_common(1)[0][0]


def select_category_path(record, main_category):
    """The first path under ``main_category``, else the first path; as token names."""
    paths = _category_paths(record)
    if not paths:
        return []
    chosen = paths[0]
    if main_category:
        main = " ".join(main_category.split())
        for path in paths:
            if " ".join(path[0].split()) == main:
                chosen = path
                break
    return [format_token(name) for name in chosen]


def item_row(item, record, main_category):
    """The ``.item`` fields of one item (``record`` None: no metadata)."""
    if record is None:
        return [item, "", "", "", "", "", ""]
    sales_rank = sales_type = ""
    ranks = record.get("salesRank")
    if isinstance(ranks, dict) and ranks:
        key, value = next(iter(ranks.items()))
        sales_type = format_token(key)
        sales_rank = format_float(value)
    return [
        item,
        format_title(record.get("title")),
        format_token(record.get("brand")),
        " ".join(select_category_path(record, main_category)),
        format_float(record.get("price")),
        sales_rank,
        sales_type,
    ]


# --------------------------------------------------------------------------- writing


def _write_temp(directory, final_name, header, rows):
    """Write a tab-separated file to a temporary file next to its destination."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final_name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            out.write("\t".join(header) + "\n")
            for row in rows:
                out.write("\t".join(row) + "\n")
            out.flush()
            os.fsync(out.fileno())
        # mkstemp creates the file private (0600); give it the usual umask-based mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _refuse_existing(paths, overwrite):
    if overwrite:
        return
    existing = [p for p in paths if os.path.lexists(p)]
    if existing:
        what = (
            f"{existing[0]} already exists"
            if len(existing) == 1
            else f"{' and '.join(existing)} already exist"
        )
        raise FileExistsError(
            f"{what}; not overwriting (pass --overwrite / overwrite=True to replace)"
        )


def _check_input(path, what):
    if path is None:
        raise ConversionError(f"no {what} file given")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    if not os.path.isfile(path):
        raise ConversionError(f"{what} path is not a file: {path}")
    if not os.access(path, os.R_OK):
        raise ConversionError(f"{what} file is not readable: {path}")
    return path


# --------------------------------------------------------------------------- entry points


def convert_amazon(reviews=None, ratings=None, meta=None, output_dir=".", name=None, kcore=None,
                   overwrite=False, skip_bad_lines=False, main_category=None, show_progress=False):
    """Convert raw McAuley Amazon 2014 files to ``<output_dir>/<name>/<name>.{inter,item}``.

    Args:
        reviews: ``reviews_<Category>[_5].json[.gz]`` (JSON lines). Exactly one of
            ``reviews`` and ``ratings``.
        ratings: ``ratings_<Category>.csv[.gz]`` (``user,item,rating,timestamp``).
        meta: ``meta_<Category>.json[.gz]`` (JSON or Python-literal lines).
        output_dir: the RecBole ``data_path``; the files go to its ``name`` sub-folder.
        name: the dataset name (e.g. ``amazon-beauty``).
        kcore: minimum interactions per user and per item, iterated until stable; default
            5 for ``ratings`` and 0 (none: the 5-core files already are) for ``reviews``.
        overwrite: replace existing output files (refused otherwise).
        skip_bad_lines: skip and count unparseable lines instead of failing.
        main_category: top-level category whose path is used for ``categories``; default:
            the one most items have a path in.
        show_progress: tqdm progress bars (on stderr) while reading.

    Returns:
        :class:`ConversionSummary`.
    """
    if (reviews is None) == (ratings is None):
        raise ConversionError(
            "give exactly one interaction file: reviews (--reviews, a reviews_*.json.gz) "
            "or ratings (--ratings, a ratings_*.csv)"
            + (", not both" if reviews is not None else "")
        )
    if not name or not isinstance(name, str):
        raise ConversionError("a dataset name is required (--name, e.g. amazon-beauty)")
    if name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
        raise ConversionError(f"invalid dataset name {name!r}: use a plain folder name")
    if kcore is None:
        kcore = DEFAULT_REVIEWS_KCORE if reviews is not None else DEFAULT_RATINGS_KCORE
    try:
        kcore = validate.integer("kcore", kcore, low=0, hint="(--kcore; 0 keeps every interaction)")
    except ValueError as error:
        raise ConversionError(str(error)) from None
    inter_source = _check_input(
        reviews if reviews is not None else ratings,
        "reviews" if reviews is not None else "ratings",
    )
    meta = _check_input(meta, "meta")

    directory = os.path.join(os.fspath(output_dir), name)
    inter_path = os.path.join(directory, f"{name}.inter")
    item_path = os.path.join(directory, f"{name}.item")
    _refuse_existing([inter_path, item_path], overwrite)

    bad = _BadLines(skip_bad_lines)
    if reviews is not None:
        raw = read_reviews(inter_source, bad, show_progress)
    else:
        raw = read_ratings(inter_source, bad, show_progress)
    inters = kcore_filter(raw, kcore)
    if not inters:
        raise ConversionError(
            f"no interactions left in {inter_source}"
            + (f" after {kcore}-core filtering" if kcore > 1 else "")
        )
    rows = order_interactions(inters)

    items = list(dict.fromkeys(item for _, item, _ in rows))
    records = read_meta(meta, set(items), bad, show_progress)
    if main_category is None:
        main_category = infer_main_category(records.values())
    item_rows = [item_row(item, records.get(item), main_category) for item in items]

    os.makedirs(directory, exist_ok=True)
    temps = []
    try:
        temps.append(
            _write_temp(
                directory,
                os.path.basename(inter_path),
                INTER_HEADER,
                ((u, i, str(t)) for u, i, t in rows),
            )
        )
        temps.append(
            _write_temp(directory, os.path.basename(item_path), ITEM_HEADER, item_rows)
        )
        _refuse_existing([inter_path, item_path], overwrite)
        os.replace(temps[0], inter_path)
        os.replace(temps[1], item_path)
        temps = []
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)

    return ConversionSummary(
        name=name,
        inter_file=inter_path,
        item_file=item_path,
        users=len({u for u, _, _ in rows}),
        items=len(items),
        interactions=len(rows),
        items_with_title=sum(1 for row in item_rows if row[1]),
        items_without_meta=sum(1 for item in items if item not in records),
        raw_interactions=len(raw),
        kcore=kcore,
        main_category=main_category or "",
        skipped_lines=dict(bad.counts),
    )


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m recbole_semprune.data.amazon",
        description=(
            "Convert the raw McAuley Amazon 2014 files (reviews_<Category>_5.json.gz or "
            "ratings_<Category>.csv, plus meta_<Category>.json.gz) into RecBole atomic "
            "files <output>/<name>/<name>.inter and <name>.item."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--reviews", help="reviews_<Category>[_5].json[.gz] (JSON lines)")
    source.add_argument(
        "--ratings", help="ratings_<Category>.csv[.gz] (user,item,rating,timestamp)"
    )
    parser.add_argument("--meta", required=True, help="meta_<Category>.json[.gz]")
    parser.add_argument(
        "--output", required=True, help="output folder (RecBole data_path)"
    )
    parser.add_argument("--name", required=True, help="dataset name, e.g. amazon-beauty")
    parser.add_argument(
        "--kcore",
        type=int,
        default=None,
        help=(
            "minimum interactions per user and item, iterated until stable "
            f"(default {DEFAULT_RATINGS_KCORE} with --ratings, none with --reviews)"
        ),
    )
    parser.add_argument(
        "--main_category",
        default=None,
        help="top-level category whose path fills `categories` (default: the most common)",
    )
    parser.add_argument(
        "--skip_bad_lines",
        action="store_true",
        help="skip (and count) unparseable lines instead of failing",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing output files"
    )
    parser.add_argument(
        "--no_progress", action="store_true", help="no progress bars"
    )
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        summary = convert_amazon(
            reviews=args.reviews,
            ratings=args.ratings,
            meta=args.meta,
            output_dir=args.output,
            name=args.name,
            kcore=args.kcore,
            overwrite=args.overwrite,
            skip_bad_lines=args.skip_bad_lines,
            main_category=args.main_category,
            show_progress=not args.no_progress,
        )
    except (ConversionError, OSError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; no output written", file=sys.stderr)
        return 130
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
