#include "engine/verify_plan.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace pgshift::engine::verify {
namespace {

std::string Quote(std::string_view id) { return "\"" + std::string(id) + "\""; }

Column Col(std::string name, std::string builtin, bool numeric = false) {
  Column c;
  c.name = std::move(name);
  c.type_schema = "pg_catalog";
  c.type_name = builtin;
  c.builtin = std::move(builtin);
  c.numeric = numeric;
  return c;
}

TableShape IntKeyed() {
  TableShape s;
  s.columns = {Col("id", "int4", true), Col("name", "text"), Col("price", "numeric", true)};
  s.key = {0};
  s.key_source = "primary key";
  return s;
}

TableShape CompositeKeyed() {
  TableShape s;
  s.columns = {Col("note", "text"), Col("order_id", "int8", true), Col("Line No", "text")};
  s.key = {1, 2};  // key order differs from column order
  return s;
}

TEST(ChooseHashMethod, TypedOnlyWhenEncodingsAndHashesAgree) {
  HashProbe a{"UTF8", "123", true}, b{"UTF8", "123", true};
  EXPECT_EQ(ChooseHashMethod(a, b), HashMethod::kTyped);
  b.encoding = "LATIN1";
  EXPECT_EQ(ChooseHashMethod(a, b), HashMethod::kMd5);
  b = {"UTF8", "999", true};  // another byte order hashes differently
  EXPECT_EQ(ChooseHashMethod(a, b), HashMethod::kMd5);
  b = {"UTF8", std::nullopt, true};
  EXPECT_EQ(ChooseHashMethod(a, b), HashMethod::kMd5);
  b = {"LATIN1", "123", false};  // FIPS: no md5
  EXPECT_EQ(ChooseHashMethod(a, b), HashMethod::kSha256);
  EXPECT_EQ(HashMethodName(HashMethod::kTyped), "hashextended");
  EXPECT_EQ(HashMethodName(HashMethod::kMd5), "md5");
  EXPECT_EQ(HashMethodName(HashMethod::kSha256), "sha256");
  for (HashMethod m : {HashMethod::kTyped, HashMethod::kMd5, HashMethod::kSha256}) {
    EXPECT_EQ(*ParseHashMethod(HashMethodName(m)), m);
  }
  EXPECT_EQ(ParseHashMethod("crc").status().code(), StatusCode::kInvalidArgument);
}

TEST(TableQueries, RangePredicatesAreTypedKeyComparisonsTheIndexServes) {
  TableShape shape = IntKeyed();
  TableQueries q("public", "t", shape, HashMethod::kTyped, true, Quote);
  Sql all = q.Aggregate(KeyRange{});
  EXPECT_EQ(all.text.find("WHERE"), std::string::npos) << all.text;
  EXPECT_TRUE(all.params.empty());
  EXPECT_NE(all.text.find(" FROM ONLY \"public\".\"t\" t"), std::string::npos);

  Sql mid = q.Aggregate(KeyRange{KeyValues{"10"}, KeyValues{"20"}});
  EXPECT_NE(mid.text.find("WHERE t.\"id\" >= $1::\"pg_catalog\".\"int4\" AND "
                          "t.\"id\" < $2::\"pg_catalog\".\"int4\""),
            std::string::npos)
      << mid.text;
  ASSERT_EQ(mid.params.size(), 2u);
  EXPECT_EQ(*mid.params[0], "10");
  EXPECT_EQ(*mid.params[1], "20");

  Sql upper = q.Aggregate(KeyRange{std::nullopt, KeyValues{"5"}});
  EXPECT_NE(upper.text.find("WHERE t.\"id\" < $1::"), std::string::npos) << upper.text;
  ASSERT_EQ(upper.params.size(), 1u);

  // No query filters on a hash of the key: nothing a btree could not serve.
  for (const Sql& s : {all, mid, upper, q.RangeRows(KeyRange{KeyValues{"1"}, std::nullopt}),
                       q.CutPoints(KeyRange{KeyValues{"1"}, KeyValues{"9"}}, 100)}) {
    std::string where = s.text.substr(std::min(s.text.find("WHERE"), s.text.size()));
    EXPECT_EQ(where.find("hash"), std::string::npos) << s.text;
    EXPECT_EQ(where.find("md5"), std::string::npos) << s.text;
  }
}

TEST(TableQueries, CompositeKeysCompareAsRowsInKeyOrder) {
  TableShape shape = CompositeKeyed();
  TableQueries q("s", "Orders", shape, HashMethod::kTyped, true, Quote);
  Sql r = q.RangeRows(KeyRange{KeyValues{"7", "a"}, KeyValues{"9", "b"}});
  EXPECT_NE(r.text.find("SELECT t.\"order_id\", t.\"Line No\", t.xmin::pg_catalog.text, "),
            std::string::npos)
      << r.text;
  EXPECT_NE(r.text.find("(t.\"order_id\", t.\"Line No\") >= ($1::\"pg_catalog\".\"int8\", "
                        "$2::\"pg_catalog\".\"text\")"),
            std::string::npos)
      << r.text;
  EXPECT_NE(r.text.find("(t.\"order_id\", t.\"Line No\") < ($3::"), std::string::npos);
  EXPECT_EQ(r.params.size(), 4u);

  Sql by = q.RowsByKey({{"7", "a,b"}, {"8", "x\"y"}});
  EXPECT_NE(by.text.find("IN (SELECT * FROM unnest($1::\"pg_catalog\".\"int8\"[], "
                         "$2::\"pg_catalog\".\"text\"[]))"),
            std::string::npos)
      << by.text;
  ASSERT_EQ(by.params.size(), 2u);
  EXPECT_EQ(*by.params[0], "{\"7\",\"8\"}");
  EXPECT_EQ(*by.params[1], "{\"a,b\",\"x\\\"y\"}");

  Sql cuts = q.CutPoints(KeyRange{}, 250);
  EXPECT_NE(cuts.text.find("row_number() OVER (ORDER BY t.\"order_id\", t.\"Line No\")"),
            std::string::npos)
      << cuts.text;
  EXPECT_NE(cuts.text.find("rn % $1::pg_catalog.int8 = 0"), std::string::npos) << cuts.text;
  EXPECT_EQ(*cuts.params.back(), "250");

  TableQueries single("public", "t", IntKeyed(), HashMethod::kTyped, true, Quote);
  Sql one = single.RowsByKey({{"1"}, {"2"}});
  EXPECT_NE(one.text.find("t.\"id\" = ANY($1::\"pg_catalog\".\"int4\"[])"), std::string::npos);
}

TEST(TableQueries, TypedHashUsesTheTypesOwnFunctionOnlyWhereEqualMeansSameText) {
  TableShape s;
  Column nondet = Col("ci", "text");
  nondet.deterministic = false;
  Column padded = Col("code", "bpchar");
  padded.typmod = 9;  // char(5)
  Column unpadded = Col("free", "bpchar");
  s.columns = {Col("a", "int4"),   Col("b", "int8"),        Col("c", "text"), Col("d", "numeric"),
               Col("e", "float8"), Col("f", "timestamptz"), nondet,           padded,
               unpadded,           Col("g", "uuid"),        Col("h", ""),     Col("i", "bool")};
  TableQueries q("public", "t", s, HashMethod::kTyped, true, Quote);
  const std::string& h = q.row_hash();
  EXPECT_NE(h.find("hashint4extended(t.\"a\", 0)"), std::string::npos) << h;
  EXPECT_NE(h.find("hashint8extended(t.\"b\", 1)"), std::string::npos);
  EXPECT_NE(h.find("hashtextextended(t.\"c\", 2)"), std::string::npos);
  // 1.0 = 1.00 and -0 = 0 for their types, not as text: hashed through text.
  EXPECT_NE(h.find("hashtextextended(t.\"d\"::pg_catalog.text, 3)"), std::string::npos);
  EXPECT_NE(h.find("hashtextextended(t.\"e\"::pg_catalog.text, 4)"), std::string::npos);
  EXPECT_NE(h.find("timestamp_hash_extended(t.\"f\" AT TIME ZONE 'UTC', 5)"), std::string::npos);
  EXPECT_NE(h.find("hashtextextended(t.\"ci\"::pg_catalog.text, 6)"), std::string::npos);
  EXPECT_NE(h.find("hashbpcharextended(t.\"code\", 7)"), std::string::npos);
  EXPECT_NE(h.find("hashtextextended(t.\"free\"::pg_catalog.text, 8)"), std::string::npos);
  EXPECT_NE(h.find("uuid_hash_extended(t.\"g\", 9)"), std::string::npos);
  EXPECT_NE(h.find("hashtextextended(t.\"h\"::pg_catalog.text, 10)"), std::string::npos);
  EXPECT_NE(h.find("hashint4extended(t.\"i\"::pg_catalog.int4, 11)"), std::string::npos);
  // NULL stands for a fixed value per column, so it is not lost in the XOR; no row text.
  EXPECT_EQ(std::count(h.begin(), h.end(), '#'), 11);
  EXPECT_EQ(h.find("coalesce("), h.find("coalesce(hashint4extended"));
  EXPECT_EQ(h.find("ROW("), std::string::npos);
}

TEST(TableQueries, DigestMethodsHashTheRowTextInUtf8) {
  TableShape shape = IntKeyed();
  TableQueries md5("public", "t", shape, HashMethod::kMd5, true, Quote);
  EXPECT_EQ(
      md5.row_hash(),
      "('x' || substr(md5(convert_to(ROW(t.\"id\", t.\"name\", t.\"price\")::pg_catalog.text, "
      "'UTF8')), 1, 16))::bit(64)::pg_catalog.int8");
  TableQueries sha("public", "t", shape, HashMethod::kSha256, true, Quote);
  EXPECT_NE(sha.row_hash().find("encode(sha256(convert_to(ROW("), std::string::npos);
  TableQueries count("public", "t", shape, HashMethod::kMd5, false, Quote);
  EXPECT_EQ(count.row_hash(), "0::pg_catalog.int8");
}

TEST(TableQueries, KeylessQueriesBucketByRowHash) {
  TableShape s;
  s.columns = {Col("a", "int4"), Col("b", "text")};
  TableQueries q("public", "nokey", s, HashMethod::kTyped, true, Quote);
  Sql b = q.HashBuckets(1024);
  EXPECT_EQ(*b.params[0], "1023");
  Sql in = q.HashesInBuckets(1024, {3, 17});
  EXPECT_EQ(*in.params[1], "{3,17}");
  Sql rows = q.RowTexts({"-5", "12"}, 20);
  EXPECT_NE(rows.text.find("LIMIT 20"), std::string::npos);
  EXPECT_EQ(*rows.params[0], "{-5,12}");
  EXPECT_NE(q.SampleKeys(0.5).text.find("TABLESAMPLE SYSTEM ($1::pg_catalog.float4)"),
            std::string::npos);
}

TEST(SplitRange, CoversTheRangeExactlyOnce) {
  KeyRange r{KeyValues{"0"}, KeyValues{"100"}};
  auto parts = SplitRange(r, {{"10"}, {"50"}});
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[0], (KeyRange{KeyValues{"0"}, KeyValues{"10"}}));
  EXPECT_EQ(parts[1], (KeyRange{KeyValues{"10"}, KeyValues{"50"}}));
  EXPECT_EQ(parts[2], (KeyRange{KeyValues{"50"}, KeyValues{"100"}}));
  auto open = SplitRange(KeyRange{}, {{"7"}});
  ASSERT_EQ(open.size(), 2u);
  EXPECT_FALSE(open[0].lo.has_value());
  EXPECT_FALSE(open[1].hi.has_value());
  EXPECT_EQ(SplitRange(r, {}).size(), 1u);
}

TEST(PickCutPoints, EvenlySpacedDistinctPoints) {
  std::vector<KeyValues> sample;
  for (int i = 0; i < 100; ++i) sample.push_back({std::to_string(1000 + i)});
  auto p = PickCutPoints(sample, 4);
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(p[0][0], "1025");
  EXPECT_EQ(p[1][0], "1050");
  EXPECT_EQ(p[2][0], "1075");
  // A sample smaller than the parts: each sampled key a cut, never the first (the range's
  // start is open anyway), never twice.
  std::vector<KeyValues> few{{"1"}, {"2"}, {"3"}};
  auto q = PickCutPoints(few, 10);
  ASSERT_EQ(q.size(), 2u);
  EXPECT_EQ(q[0][0], "2");
  EXPECT_EQ(q[1][0], "3");
  EXPECT_TRUE(PickCutPoints(sample, 1).empty());
  EXPECT_TRUE(PickCutPoints({}, 8).empty());
}

TEST(KeyText, NumbersBareOtherValuesQuoted) {
  TableShape s = CompositeKeyed();
  EXPECT_EQ(KeyText(s, {"7", "4"}), "(7,'4')");
  EXPECT_EQ(KeyText(s, {"7", "it's"}), "(7,'it''s')");
  EXPECT_EQ(KeyText(s, {"7", "back\\slash"}), "(7,E'back\\\\slash')");
  EXPECT_EQ(KeyText(IntKeyed(), {"42"}), "(42)");
}

TEST(NaturalLess, DigitsCompareAsNumbers) {
  std::vector<std::string> keys{"(10)", "(9)", "(100)", "(7,'b')", "(7,'a')", "(07)"};
  std::sort(keys.begin(), keys.end(), NaturalLess);
  EXPECT_EQ(keys, (std::vector<std::string>{"(7,'a')", "(7,'b')", "(07)", "(9)", "(10)", "(100)"}));
}

TEST(HashSum, AddsBeyond64Bits) {
  HashSum a, b;
  EXPECT_TRUE(a.Add("9223372036854775807"));
  EXPECT_TRUE(a.Add("9223372036854775807"));
  EXPECT_EQ(a.ToString(), "18446744073709551614");
  EXPECT_TRUE(a.Add("-26464796136578701371592"));
  EXPECT_EQ(a.ToString(), "-26446349392504991819978");
  EXPECT_TRUE(b.Add("0"));
  EXPECT_EQ(b.ToString(), "0");
  EXPECT_FALSE(b.Add("1.5"));
  EXPECT_FALSE(b.Add(""));
  EXPECT_FALSE(b.Add("123456789012345678901234567890123456789"));  // 39 digits
  HashSum c, d;
  c.Add("5");
  c.Add("-3");
  d.Add("2");
  EXPECT_TRUE(c == d);
}

RowObservation Row(std::string version, std::string hash) {
  return {true, std::move(version), std::move(hash)};
}
const RowObservation kAbsent{};

TEST(ClassifyRow, EqualAtSomePointIsAMatch) {
  EXPECT_EQ(ClassifyRow({Row("1", "a")}, {Row("9", "a")}), RowVerdict::kMatch);
  // The target shows what the source had by its next read: replication delivered it.
  EXPECT_EQ(ClassifyRow({Row("1", "a"), Row("2", "b")}, {Row("9", "b")}), RowVerdict::kMatch);
  EXPECT_EQ(ClassifyRow({kAbsent, kAbsent}, {kAbsent}), RowVerdict::kMatch);
  // A hot row equal in the third round.
  EXPECT_EQ(ClassifyRow({Row("1", "a"), Row("2", "b"), Row("3", "c"), Row("4", "d")},
                        {Row("8", "x"), Row("9", "y"), Row("10", "d")}),
            RowVerdict::kMatch);
}

TEST(ClassifyRow, AHotRowIsChanging) {
  // Every read shows a new version on both sides: being written, nothing proven.
  EXPECT_EQ(
      ClassifyRow({Row("1", "a"), Row("2", "b"), Row("3", "c")}, {Row("7", "x"), Row("8", "y")}),
      RowVerdict::kChanging);
  // Inserted then deleted between reads.
  EXPECT_EQ(ClassifyRow({kAbsent, kAbsent}, {Row("5", "a")}), RowVerdict::kChanging);
  // Only one read each: nothing to bracket with.
  EXPECT_EQ(ClassifyRow({Row("1", "a")}, {Row("9", "b")}), RowVerdict::kChanging);
  EXPECT_EQ(ClassifyRow({Row("1", "a")}, {}), RowVerdict::kChanging);
}

TEST(ClassifyRow, SourceStandingStillWhileTheTargetDiffersIsADifference) {
  // Tampered on the target: the source kept version 1 around the target's read.
  EXPECT_EQ(ClassifyRow({Row("1", "a"), Row("1", "a")}, {Row("9", "TAMPERED")}),
            RowVerdict::kDifferent);
  // Deleted on the target only.
  EXPECT_EQ(ClassifyRow({Row("1", "a"), Row("1", "a")}, {kAbsent}), RowVerdict::kDifferent);
  // Same hash but a new version in between (written, and written back): not proven.
  EXPECT_EQ(ClassifyRow({Row("1", "a"), Row("2", "a")}, {Row("9", "b")}), RowVerdict::kChanging);
  // Changing first, then standing still.
  EXPECT_EQ(
      ClassifyRow({Row("1", "a"), Row("2", "b"), Row("2", "b")}, {Row("7", "x"), Row("7", "x")}),
      RowVerdict::kDifferent);
}

TEST(ClassifyRow, TargetStandingStillWhileTheSourceDiffersIsADifference) {
  // Only on the target, untouched by replication across a source read that lacks it.
  EXPECT_EQ(ClassifyRow({kAbsent, kAbsent}, {Row("5", "a"), Row("5", "a")}),
            RowVerdict::kDifferent);
  // Present on both, the source keeps changing but the target never receives any of it.
  EXPECT_EQ(
      ClassifyRow({Row("1", "a"), Row("2", "b"), Row("3", "c")}, {Row("9", "z"), Row("9", "z")}),
      RowVerdict::kDifferent);
  // The target got a new version in between: replication is working on it.
  EXPECT_EQ(ClassifyRow({kAbsent, kAbsent, kAbsent}, {Row("5", "a"), Row("6", "a")}),
            RowVerdict::kChanging);
}

}  // namespace
}  // namespace pgshift::engine::verify
