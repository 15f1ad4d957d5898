#include "k8s/api_error.h"

#include <gtest/gtest.h>

namespace pgshift::k8s {
namespace {

TEST(ApiErrorTest, MapsKubernetesStatusToCodes) {
  Status nf = StatusFromResponse(
      "GET /api/v1/namespaces/a/pods/x", 404,
      R"({"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \"x\" not found","reason":"NotFound","code":404})");
  EXPECT_EQ(nf.code(), StatusCode::kNotFound);
  EXPECT_EQ(nf.message(), "GET /api/v1/namespaces/a/pods/x: HTTP 404 NotFound: pods \"x\" not found");
  EXPECT_TRUE(IsNotFound(nf));

  Status exists = StatusFromResponse("POST p", 409, R"({"kind":"Status","reason":"AlreadyExists","message":"m"})");
  EXPECT_EQ(exists.code(), StatusCode::kAlreadyExists);
  EXPECT_TRUE(IsAlreadyExists(exists));
  EXPECT_FALSE(IsConflict(exists));

  Status conflict = StatusFromResponse("PUT p", 409, R"({"kind":"Status","reason":"Conflict","message":"modified"})");
  EXPECT_EQ(conflict.code(), StatusCode::kAborted);
  EXPECT_TRUE(IsConflict(conflict));

  EXPECT_EQ(StatusFromResponse("w", 410, R"({"kind":"Status","reason":"Expired"})").code(),
            StatusCode::kFailedPrecondition);
  EXPECT_TRUE(IsGone(StatusFromResponse("w", 410, "")));
  EXPECT_EQ(StatusFromResponse("x", 422, "{}").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(StatusFromResponse("x", 403, "{}").code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(StatusFromResponse("x", 429, "{}").code(), StatusCode::kUnavailable);
  EXPECT_EQ(StatusFromResponse("x", 503, "{}").code(), StatusCode::kUnavailable);
}

TEST(ApiErrorTest, ReadsBackThroughContextAndHandlesOddBodies) {
  Status s = StatusFromResponse("PATCH /x", 409, R"({"kind":"Status","reason":"Conflict","message":"Apply failed with 1 conflict"})")
                 .WithContext("applying widget");
  auto e = ApiErrorOf(s);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->http_status, 409);
  EXPECT_EQ(e->reason, "Conflict");
  EXPECT_EQ(e->message, "Apply failed with 1 conflict");

  Status plain = StatusFromResponse("GET /healthz", 500, "not json at all");
  auto pe = ApiErrorOf(plain);
  ASSERT_TRUE(pe.has_value());
  EXPECT_EQ(pe->reason, "InternalError");
  EXPECT_EQ(pe->message, "not json at all");
  EXPECT_FALSE(ApiErrorOf(Status::Unavailable("connection refused")).has_value());
  EXPECT_FALSE(ApiErrorOf(Status::Ok()).has_value());
}

}  // namespace
}  // namespace pgshift::k8s
