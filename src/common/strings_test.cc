#include "common/strings.h"

#include <gtest/gtest.h>

#include "common/status.h"

namespace pgshift {
namespace {

TEST(RedactSecrets, HidesPasswordsInEveryConnectionStringForm) {
  EXPECT_EQ(RedactSecrets("postgresql://app:s3cr3t@db:5432/x"), "postgresql://app:*****@db:5432/x");
  EXPECT_EQ(RedactSecrets("host=db password=s3cr3t user=app"), "host=db password=***** user=app");
  EXPECT_EQ(RedactSecrets("host=db password='a b\\'c' user=app"), "host=db password=***** user=app");
  EXPECT_EQ(RedactSecrets("postgres://h/db?user=a&password=zz&sslmode=off"),
            "postgres://h/db?user=a&password=*****&sslmode=off");
  EXPECT_EQ(RedactSecrets("postgresql://app@db/x?passfile=/p"), "postgresql://app@db/x?passfile=/p");
  // SQL, as pg_dumpall writes it and a server error echoes it.
  EXPECT_EQ(RedactSecrets("ALTER ROLE app WITH LOGIN PASSWORD 'SCRAM-SHA-256$4096:ab$c''d';"),
            "ALTER ROLE app WITH LOGIN PASSWORD '*****';");
}

TEST(Split, KeepsOrSkipsEmptyParts) {
  EXPECT_EQ(Split("a,,b", ','), (std::vector<std::string>{"a", "", "b"}));
  EXPECT_EQ(Split("a,,b", ',', true), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(Join({"a", "b"}, ", "), "a, b");
}

TEST(ParseInt64, RejectsTrailingGarbage) {
  long long v = 0;
  EXPECT_TRUE(ParseInt64(" 42 ", &v));
  EXPECT_EQ(v, 42);
  EXPECT_FALSE(ParseInt64("42x", &v));
  EXPECT_FALSE(ParseInt64("", &v));
}

TEST(ParseDouble, TakesNumbersOnly) {
  double v = 0;
  EXPECT_TRUE(ParseDouble("12.5", &v));
  EXPECT_DOUBLE_EQ(v, 12.5);
  EXPECT_TRUE(ParseDouble("-3e2", &v));
  EXPECT_DOUBLE_EQ(v, -300);
  EXPECT_FALSE(ParseDouble("", &v));  // a NULL cell reads as ""
  EXPECT_FALSE(ParseDouble("1.5 ms", &v));
}

TEST(RandomHex, HasTheLengthAskedAndDiffers) {
  std::string a = RandomHex(24), b = RandomHex(24);
  EXPECT_EQ(a.size(), 24u);
  EXPECT_NE(a, b);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
}

TEST(Status, ContextKeepsTheCode) {
  Status s = Status::Unavailable("connection refused").WithContext("connecting to source");
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "connecting to source: connection refused");
  EXPECT_TRUE(Status::Ok().WithContext("x").ok());
  Result<int> r = Status::NotFound("nope");
  EXPECT_FALSE(r.ok());
  Result<int> v = 3;
  EXPECT_EQ(*v, 3);
}

}  // namespace
}  // namespace pgshift
