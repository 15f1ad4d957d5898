#include "k8s/logging.h"

#include <gtest/gtest.h>

#include <vector>

namespace pgshift::k8s {
namespace {

TEST(RedactTest, MasksCredentials) {
  const std::string jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJlLXBhcnQ";
  std::string r = Redact("Authorization: Bearer " + jwt + "\nnext line");
  EXPECT_EQ(r.find(jwt), std::string::npos);
  EXPECT_NE(r.find("next line"), std::string::npos);
  EXPECT_EQ(Redact("token " + jwt + " used").find("eyJ"), std::string::npos);
  EXPECT_EQ(Redact("bearer abc123secret").find("abc123secret"), std::string::npos);
  std::string pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----";
  EXPECT_EQ(Redact("key: " + pem).find("MHcCAQEE"), std::string::npos);
  EXPECT_EQ(Redact("GET /api/v1/pods: HTTP 404 NotFound"), "GET /api/v1/pods: HTTP 404 NotFound");
}

TEST(LogTest, SinkGetsRedactedLines) {
  std::vector<std::string> lines;
  SetLogSink([&](LogLevel, std::string_view l) { lines.emplace_back(l); });
  Log(LogLevel::kInfo, "sending Bearer sekrit-token-value");
  SetLogSink(nullptr);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].find("sekrit"), std::string::npos);
}

}  // namespace
}  // namespace pgshift::k8s
