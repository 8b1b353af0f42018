"""Tests of the McAuley Amazon 2014 -> RecBole atomic files converter."""

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import recbole_semprune  # noqa: F401  (restores the numpy aliases RecBole needs)
from recbole_semprune.data import amazon
from recbole_semprune.data.amazon import (
    BadLineError,
    ConversionError,
    convert_amazon,
    kcore_filter,
    main,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

D1 = 1318896000  # a review day (unixReviewTime is a day at 00:00 UTC)
D2 = D1 + 86400
D3 = D1 + 2 * 86400

INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float"
ITEM_HEADER = (
    "item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq\t"
    "price:float\tsales_rank:float\tsales_type:token"
)

# Raw reviews, in file order. U1 has a tie on D1 (A002 before A003 in the file), U3 a tie on
# D2 where the file order (A005, A003) is not the ASIN order: ties keep the file order.
REVIEWS = [
    {"reviewerID": "U1", "asin": "A001", "overall": 5.0, "unixReviewTime": D2,
     "reviewText": "great\tbalm", "reviewTime": "10 19, 2011"},
    {"reviewerID": "U2", "asin": "A001", "overall": 4.0, "unixReviewTime": D1},
    {"reviewerID": "U1", "asin": "A002", "overall": 3.0, "unixReviewTime": D1},
    {"reviewerID": "U1", "asin": "A003", "overall": 5.0, "unixReviewTime": D1},
    {"reviewerID": "U2", "asin": "A004", "overall": 2.0, "unixReviewTime": D1},
    {"reviewerID": "U3", "asin": "A005", "overall": 5.0, "unixReviewTime": D2},
    {"reviewerID": "U3", "asin": "A002", "overall": 5.0, "unixReviewTime": D3},
    {"reviewerID": "U2", "asin": "A002", "overall": 1.0, "unixReviewTime": D3},
    {"reviewerID": "U3", "asin": "A003", "overall": 4.0, "unixReviewTime": D2},
    {"reviewerID": "U1", "asin": "A004", "overall": 5.0, "unixReviewTime": D3},
]

# meta lines as in the 2014 dump: Python dict literals (single quotes, \u escapes), one
# strict JSON line, an item that is not in the interactions, no record for A005.
META_LINES = [
    "{'asin': 'A099', 'title': 'Never reviewed', 'categories': [['Beauty']]}",
    "{'asin': 'A001', 'title': 'Cr\u00e8me  Br\u00fbl\u00e9e\\tLip Balm\\n', "
    "'brand': \"L'Or\\u00e9al Paris\", 'price': 12.0, 'imUrl': 'http://x/y.jpg', "
    "'related': {'also_bought': ['A002', 'A003']}, 'salesRank': {'Beauty': 344222}, "
    "'categories': [['Health & Personal Care', 'Personal Care', 'Lip Care'], "
    "['Beauty', 'Skin Care', 'Lip Care'], ['Beauty', 'Makeup', 'Lips']]}",
    "{'asin': 'A002', 'title': 'OPI Nail Lacquer,   \"Big Apple Red\"', 'price': 3.04, "
    "'salesRank': {'Health & Personal Care': 663280}, "
    "'categories': [['Beauty', 'Makeup', 'Nails', 'Nail Polish']]}",
    json.dumps({"asin": "A003", "title": "\"Best\" Sponge  (6 pcs)", "brand": "Blue  Moon",
                "categories": [["Beauty"]]}),
    "{'asin': 'A004', 'brand': '', 'price': 9.5, 'salesRank': {}, "
    "'categories': [['Toys & Games', 'Dress Up'], ['Clothing', 'Costumes']]}",
    "{'asin': 'A001', 'title': 'a later duplicate record is ignored'}",
]

EXPECTED_INTER = [
    INTER_HEADER,
    f"U1\tA002\t{D1}",
    f"U1\tA003\t{D1 + 1}",
    f"U1\tA001\t{D2 + 2}",
    f"U1\tA004\t{D3 + 3}",
    f"U2\tA001\t{D1}",
    f"U2\tA004\t{D1 + 1}",
    f"U2\tA002\t{D3 + 2}",
    f"U3\tA005\t{D2}",
    f"U3\tA003\t{D2 + 1}",
    f"U3\tA002\t{D3 + 2}",
]

EXPECTED_ITEM = [
    ITEM_HEADER,
    "A002\tOPI Nail Lacquer, &quot;Big Apple Red&quot;\t\tBeauty Makeup Nails Nail_Polish"
    "\t3.04\t663280.0\tHealth_&_Personal_Care",
    "A003\t&quot;Best&quot; Sponge (6 pcs)\tBlue_Moon\tBeauty\t\t\t",
    "A001\tCr\u00e8me Br\u00fbl\u00e9e Lip Balm\tL'Or\u00e9al_Paris\tBeauty Skin_Care Lip_Care"
    "\t12.0\t344222.0\tBeauty",
    "A004\t\t\tToys_&_Games Dress_Up\t9.5\t\t",
    "A005\t\t\t\t\t\t",
]


def write_lines(path, lines, compress):
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if compress:
        with gzip.open(path, "wb") as out:
            out.write(data)
    else:
        Path(path).write_bytes(data)
    return path


@pytest.fixture
def raw(tmp_path):
    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    reviews = write_lines(
        raw_dir / "reviews_Beauty_5.json.gz", [json.dumps(r) for r in REVIEWS], True
    )
    meta = write_lines(raw_dir / "meta_Beauty.json.gz", META_LINES, True)
    return reviews, meta


def read_output(out_dir, name):
    inter = (out_dir / name / f"{name}.inter").read_text(encoding="utf-8").split("\n")
    item = (out_dir / name / f"{name}.item").read_text(encoding="utf-8").split("\n")
    assert inter[-1] == "" and item[-1] == ""  # newline-terminated
    return inter[:-1], item[:-1]


def test_reviews_exact_output(raw, tmp_path):
    reviews, meta = raw
    out = tmp_path / "dataset"
    summary = convert_amazon(reviews=reviews, meta=meta, output_dir=out, name="amz-tiny")
    inter, item = read_output(out, "amz-tiny")
    assert inter == EXPECTED_INTER
    assert item == EXPECTED_ITEM
    assert (summary.users, summary.items, summary.interactions) == (3, 5, 10)
    assert summary.items_with_title == 3
    assert summary.items_without_meta == 1
    assert summary.main_category == "Beauty"
    assert summary.kcore == 0  # the reviews 5-core files are used as they are
    assert sorted(os.listdir(out / "amz-tiny")) == ["amz-tiny.inter", "amz-tiny.item"]
    text = summary.format()
    assert "users:" in text and "items with title:" in text and "amz-tiny.inter" in text


def test_plain_files_and_explicit_main_category(tmp_path):
    reviews = write_lines(tmp_path / "reviews.json", [json.dumps(r) for r in REVIEWS], False)
    meta = write_lines(tmp_path / "meta.json", META_LINES, False)
    convert_amazon(
        reviews=reviews,
        meta=meta,
        output_dir=tmp_path / "out",
        name="plain",
        main_category="Health & Personal Care",
    )
    inter, item = read_output(tmp_path / "out", "plain")
    assert inter == EXPECTED_INTER
    a001 = next(line for line in item if line.startswith("A001\t"))
    assert a001.split("\t")[3] == "Health_&_Personal_Care Personal_Care Lip_Care"
    # items without a path in the main category keep their first path
    assert item[2].split("\t")[3] == "Beauty"


def test_recbole_loads_the_output(raw, tmp_path):
    from recbole.config import Config
    from recbole.data import create_dataset

    reviews, meta = raw
    name = "amz-tiny"
    convert_amazon(reviews=reviews, meta=meta, output_dir=tmp_path, name=name)
    config = Config(
        model="SASRec",
        dataset=name,
        config_dict={
            "data_path": str(tmp_path),
            "checkpoint_dir": str(tmp_path / "saved"),
            "load_col": {
                "inter": ["user_id", "item_id", "timestamp"],
                "item": ["item_id", "title", "brand", "categories", "price",
                         "sales_rank", "sales_type"],
            },
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
            "train_neg_sample_args": None,
            "loss_type": "CE",
            "show_progress": False,
            "use_gpu": False,
            "save_dataset": False,
            "save_dataloaders": False,
        },
    )
    dataset = create_dataset(config)
    assert dataset.inter_num == 10
    assert dataset.user_num == 3 + 1  # + [PAD]
    assert dataset.item_num == 5 + 1

    def tokens(field, item):
        row = dataset.item_feat[field][dataset.token2id("item_id", item)]
        return [dataset.id2token(field, int(t)) for t in row if int(t) != 0]

    assert tokens("categories", "A001") == ["Beauty", "Skin_Care", "Lip_Care"]
    assert tokens("title", "A001") == ["Cr\u00e8me", "Br\u00fbl\u00e9e", "Lip", "Balm"]
    assert tokens("title", "A003") == ["&quot;Best&quot;", "Sponge", "(6", "pcs)"]
    assert tokens("title", "A005") == []
    brand = dataset.item_feat["brand"][dataset.token2id("item_id", "A001")]
    assert dataset.id2token("brand", int(brand)) == "L'Or\u00e9al_Paris"

    # RecBole's time ordering ('TO') and leave-one-out split reproduce the converter's order
    train, valid, test = dataset.build()

    def sequence(part, user):
        """History + target item of the user's (last) row in a built split."""
        feat = part.inter_feat
        row = feat["user_id"].tolist().index(dataset.token2id("user_id", user))
        length = int(feat["item_length"][row])
        history = feat["item_id_list"][row][:length].tolist()
        return [dataset.id2token("item_id", i) for i in history + [int(feat["item_id"][row])]]

    assert sequence(test, "U1") == ["A002", "A003", "A001", "A004"]
    assert sequence(valid, "U1") == ["A002", "A003", "A001"]
    assert sequence(test, "U2") == ["A001", "A004", "A002"]
    assert sequence(test, "U3") == ["A005", "A003", "A002"]


def _ratings_rows():
    """A 5x5 full core plus stragglers; i6 only falls below 5 after u6 is removed."""
    rows = []
    stamp = 1_400_000_000
    core_users = [f"u{n}" for n in range(1, 6)]
    core_items = [f"i{n}" for n in range(1, 6)]
    for item in core_items:  # the csv is grouped by item, like the 2014 files
        for user in core_users:
            rows.append((user, item))
    rows += [("u6", "i1"), ("u6", "i2"), ("u6", "i3")]  # u6: 4 ratings in all
    rows += [(u, "i6") for u in ("u1", "u2", "u3", "u4", "u6")]  # i6: 5, then 4
    rows += [("u5", "i7")]  # i7: 1 rating
    lines = []
    for n, (user, item) in enumerate(rows):
        lines.append(f"{user},{item},{1 + n % 5}.0,{stamp + 86400 * (n % 7)}")
    return rows, lines


def test_ratings_csv_iterated_kcore(tmp_path):
    rows, lines = _ratings_rows()
    ratings = write_lines(tmp_path / "ratings_Beauty.csv", lines, False)
    meta = write_lines(
        tmp_path / "meta.json",
        [repr({"asin": f"i{n}", "title": f"item {n}", "categories": [["Beauty"]]})
         for n in range(1, 8)],
        True,  # gzip content under a plain name: detected by its magic bytes
    )
    summary = convert_amazon(ratings=ratings, meta=meta, output_dir=tmp_path, name="r5")
    assert summary.kcore == 5
    assert (summary.users, summary.items, summary.interactions) == (5, 5, 25)
    assert summary.raw_interactions == len(rows)
    inter, item = read_output(tmp_path, "r5")
    assert inter[0] == INTER_HEADER
    pairs = [tuple(line.split("\t")[:2]) for line in inter[1:]]
    expected = {(f"u{u}", f"i{i}") for u in range(1, 6) for i in range(1, 6)}
    assert set(pairs) == expected and len(pairs) == 25
    # the items of the interactions, in order of first appearance in the .inter file
    assert [line.split("\t")[0] for line in item[1:]] == list(dict.fromkeys(p[1] for p in pairs))
    assert sorted(line.split("\t")[0] for line in item[1:]) == ["i1", "i2", "i3", "i4", "i5"]
    # users in order of first appearance, each a contiguous, time-ordered block
    users_in_order = list(dict.fromkeys(p[0] for p in pairs))
    assert users_in_order == ["u1", "u2", "u3", "u4", "u5"]
    for user in users_in_order:
        stamps = [int(line.split("\t")[2]) for line in inter[1:] if line.startswith(user + "\t")]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)

    # kcore=0 keeps everything
    convert_amazon(ratings=ratings, meta=meta, output_dir=tmp_path, name="r0", kcore=0)
    inter0, item0 = read_output(tmp_path, "r0")
    assert len(inter0) - 1 == len(rows)
    assert len(item0) - 1 == 7


def test_kcore_filter_iterates_until_stable():
    rows, _ = _ratings_rows()
    inters = [(u, i, 0) for u, i in rows]
    one_pass = [
        r for r in inters
        if sum(x[0] == r[0] for x in inters) >= 5 and sum(x[1] == r[1] for x in inters) >= 5
    ]
    assert any(r[1] == "i6" for r in one_pass)  # a single pass would keep i6
    kept = kcore_filter(inters, 5)
    assert len(kept) == 25 and not any(r[1] == "i6" for r in kept)
    assert kcore_filter(inters, 0) == inters and kcore_filter(inters, 1) == inters
    assert kcore_filter(inters, 6) == []


def test_cli_module(raw, tmp_path):
    reviews, meta = raw
    out = tmp_path / "dataset"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    cmd = [sys.executable, "-m", "recbole_semprune.data.amazon", "--reviews", str(reviews),
           "--meta", str(meta), "--output", str(out), "--name", "amazon-tiny"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"interactions:\s+10\n", proc.stdout), proc.stdout
    assert re.search(r"items with title:\s+3\n", proc.stdout), proc.stdout
    assert "reading reviews" in proc.stderr  # the tqdm progress bar
    inter, item = read_output(out, "amazon-tiny")
    assert inter == EXPECTED_INTER and item == EXPECTED_ITEM

    # a second run refuses to overwrite
    again = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 1
    assert "already exist" in again.stderr and "--overwrite" in again.stderr


def test_no_overwrite_without_flag(raw, tmp_path):
    reviews, meta = raw
    convert_amazon(reviews=reviews, meta=meta, output_dir=tmp_path, name="d")
    inter_path = tmp_path / "d" / "d.inter"
    item_path = tmp_path / "d" / "d.item"
    inter_path.write_text("keep me\n")
    before_item = item_path.read_text()
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_amazon(reviews=reviews, meta=meta, output_dir=tmp_path, name="d")
    assert inter_path.read_text() == "keep me\n"
    assert item_path.read_text() == before_item
    # only the .item exists: still refused
    inter_path.unlink()
    with pytest.raises(FileExistsError):
        convert_amazon(reviews=reviews, meta=meta, output_dir=tmp_path, name="d")
    assert not inter_path.exists()
    convert_amazon(reviews=reviews, meta=meta, output_dir=tmp_path, name="d", overwrite=True)
    assert read_output(tmp_path, "d") == (EXPECTED_INTER, EXPECTED_ITEM)


def test_interrupted_write_leaves_no_file(raw, tmp_path, monkeypatch):
    reviews, meta = raw

    class Interrupt:
        def __str__(self):
            raise KeyboardInterrupt

    real_order = amazon.order_interactions

    def order_then_interrupt(inters):
        rows = real_order(inters)
        return rows[:5] + [("U9", "A001", Interrupt())] + rows[5:]

    monkeypatch.setattr(amazon, "order_interactions", order_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert_amazon(reviews=reviews, meta=meta, output_dir=tmp_path, name="x")
    assert os.listdir(tmp_path / "x") == []  # neither a half file nor a temp file

    # with --overwrite, an interrupted run keeps the previous complete files
    monkeypatch.setattr(amazon, "order_interactions", real_order)
    convert_amazon(reviews=reviews, meta=meta, output_dir=tmp_path, name="x")
    monkeypatch.setattr(amazon, "order_interactions", order_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert_amazon(reviews=reviews, meta=meta, output_dir=tmp_path, name="x",
                       overwrite=True)
    assert sorted(os.listdir(tmp_path / "x")) == ["x.inter", "x.item"]
    assert read_output(tmp_path, "x") == (EXPECTED_INTER, EXPECTED_ITEM)


def test_bad_lines_fail_or_are_skipped(tmp_path):
    lines = [json.dumps(r) for r in REVIEWS]
    lines.insert(2, '{"reviewerID": "U7", "asin": "A001", "unixReviewTime": ')  # line 3
    lines.insert(5, json.dumps({"reviewerID": "U7", "asin": "A001"}))  # line 6
    reviews = write_lines(tmp_path / "reviews.json.gz", lines, True)
    meta = write_lines(tmp_path / "meta.json.gz", META_LINES, True)
    with pytest.raises(BadLineError) as info:
        convert_amazon(reviews=reviews, meta=meta, output_dir=tmp_path, name="b")
    assert info.value.line_no == 3
    assert str(reviews) in str(info.value) and "line 3" in str(info.value)
    assert "--skip_bad_lines" in str(info.value)
    assert not (tmp_path / "b").exists()

    summary = convert_amazon(
        reviews=reviews, meta=meta, output_dir=tmp_path, name="b", skip_bad_lines=True
    )
    assert summary.skipped_lines == {str(reviews): 2}
    assert read_output(tmp_path, "b") == (EXPECTED_INTER, EXPECTED_ITEM)
    assert "skipped 2 bad line(s)" in summary.format()


def test_bad_meta_line_and_bad_bytes(raw, tmp_path):
    reviews, _ = raw
    meta = write_lines(
        tmp_path / "meta.json",
        META_LINES[:2] + ["{'asin': 'A002', 'title': 'unterminated}"] + META_LINES[3:],
        False,
    )
    with pytest.raises(BadLineError, match="line 3"):
        convert_amazon(reviews=reviews, meta=meta, output_dir=tmp_path, name="m")

    ratings = tmp_path / "ratings.csv"
    ratings.write_bytes(b"user,item,rating,timestamp\nu1,i1,5.0,1400000000\nu1,\xff\xfe,1,2\n")
    with pytest.raises(BadLineError, match="line 1"):
        convert_amazon(ratings=ratings, meta=meta, output_dir=tmp_path, name="m", kcore=0)
    with pytest.raises(BadLineError) as info:
        amazon.read_ratings(ratings, amazon._BadLines(False))
    assert info.value.line_no == 1
    bad = amazon._BadLines(True)
    assert amazon.read_ratings(ratings, bad) == [("u1", "i1", 1400000000)]
    assert bad.counts == {str(ratings): 2}  # the header and the non-UTF-8 line


def test_truncated_gzip(raw, tmp_path):
    reviews, meta = raw
    data = gzip.compress(("\n".join(json.dumps(r) for r in REVIEWS * 50) + "\n").encode())
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated"):
        convert_amazon(reviews=cut, meta=meta, output_dir=tmp_path, name="t")


def test_argument_errors(raw, tmp_path, capsys):
    reviews, meta = raw
    with pytest.raises(ConversionError, match="exactly one"):
        convert_amazon(meta=meta, output_dir=tmp_path, name="e")
    with pytest.raises(ConversionError, match="not both"):
        convert_amazon(reviews=reviews, ratings=reviews, meta=meta, output_dir=tmp_path,
                       name="e")
    with pytest.raises(FileNotFoundError, match="missing.json.gz"):
        convert_amazon(reviews=tmp_path / "missing.json.gz", meta=meta, output_dir=tmp_path,
                       name="e")
    with pytest.raises(FileNotFoundError, match="meta file not found"):
        convert_amazon(reviews=reviews, meta=tmp_path / "nope.gz", output_dir=tmp_path,
                       name="e")
    with pytest.raises(ConversionError, match="meta"):
        convert_amazon(reviews=reviews, output_dir=tmp_path, name="e")
    with pytest.raises(ConversionError, match="kcore"):
        convert_amazon(reviews=reviews, meta=meta, output_dir=tmp_path, name="e", kcore=-1)
    with pytest.raises(ConversionError, match="name"):
        convert_amazon(reviews=reviews, meta=meta, output_dir=tmp_path, name="a/b")
    with pytest.raises(ConversionError, match="no interactions left"):
        convert_amazon(reviews=reviews, meta=meta, output_dir=tmp_path, name="e", kcore=50)
    assert not (tmp_path / "e").exists()

    # command line: clear messages and exit codes
    common = ["--meta", str(meta), "--output", str(tmp_path), "--name", "e"]
    assert main(["--reviews", str(tmp_path / "missing.json.gz"), "--no_progress"] + common) == 1
    assert "reviews file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--reviews", str(reviews), "--ratings", str(reviews)] + common)
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(common)
    assert info.value.code == 2
    assert "one of the arguments --reviews --ratings is required" in capsys.readouterr().err


def test_parsing_helpers():
    assert amazon.parse_record('{"asin": "X"}') == {"asin": "X"}
    assert amazon.parse_record("{'asin': 'X', 'price': 1.5}") == {"asin": "X", "price": 1.5}
    with pytest.raises(ValueError):
        amazon.parse_record("['not', 'a', 'dict']")
    assert amazon.format_float(12) == "12.0"
    assert amazon.format_float(3.04) == "3.04"
    assert amazon.format_float("$1,299.5") == "1299.5"
    assert amazon.format_float(None) == ""
    assert amazon.format_float(float("nan")) == ""
    assert amazon.format_title(" a\tb \n c ") == "a b c"
    assert amazon.format_token("Home &amp; Kitchen") == "Home_&amp;_Kitchen"
