#include <gtest/gtest.h>

#include "pg/conninfo.h"
#include "pg/lsn.h"

namespace pgshift::pg {
namespace {

TEST(ConnInfo, ParsesUrisAndKeywordForms) {
  auto a = ConnInfo::Parse("postgresql://app:pw@db.example:6432/shop?sslmode=disable");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->host(), "db.example");
  EXPECT_EQ(a->port(), "6432");
  EXPECT_EQ(a->user(), "app");
  EXPECT_EQ(a->dbname(), "shop");
  EXPECT_EQ(a->Get("password"), "pw");
  EXPECT_EQ(a->Redacted().find("pw'"), std::string::npos);

  auto b = ConnInfo::Parse("host=h port=5 dbname='my db' password='it\\'s'");
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->dbname(), "my db");
  // Rendering round-trips through libpq's parser, quotes included.
  auto c = ConnInfo::Parse(b->ToString());
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->dbname(), "my db");
  EXPECT_EQ(c->Get("password"), b->Get("password"));
}

TEST(ConnInfo, BadInputSaysWhatIsExpected) {
  auto r = ConnInfo::Parse("host=h port");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("expected e.g."), std::string::npos);
  EXPECT_FALSE(ConnInfo::Parse("postgresql://h:5432/db?nosuchoption=1").ok());
}

TEST(Lsn, ParsesAndFormats) {
  auto l = Lsn::Parse("16/B374D848");
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->value, (0x16ULL << 32) | 0xB374D848ULL);
  EXPECT_EQ(l->ToString(), "16/B374D848");
  EXPECT_LT(*Lsn::Parse("0/FF"), *Lsn::Parse("1/0"));
  EXPECT_FALSE(Lsn::Parse("16-B3").ok());
  EXPECT_FALSE(Lsn::Parse("1/2x").ok());
}

}  // namespace
}  // namespace pgshift::pg

namespace pgshift::pg {
namespace {

TEST(TextArrayLiteral, QuotesAndEscapesEveryElement) {
  EXPECT_EQ(TextArrayLiteral({}), "{}");
  EXPECT_EQ(TextArrayLiteral({"app", "My DB"}), "{\"app\",\"My DB\"}");
  EXPECT_EQ(TextArrayLiteral({"a\"b", "c\\d", "{x,y}"}), "{\"a\\\"b\",\"c\\\\d\",\"{x,y}\"}");
}

}  // namespace
}  // namespace pgshift::pg
