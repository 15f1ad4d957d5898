#include "k8s/resource.h"

#include <gtest/gtest.h>

namespace pgshift::k8s {
namespace {

TEST(ResourceTest, Paths) {
  EXPECT_EQ(resources::kPods.Path("ns", "p"), "/api/v1/namespaces/ns/pods/p");
  EXPECT_EQ(resources::kPods.Path(""), "/api/v1/pods");
  EXPECT_EQ(resources::kStatefulSets.Path("a", "b", "status"),
            "/apis/apps/v1/namespaces/a/statefulsets/b/status");
  EXPECT_EQ(resources::kNodes.Path("ignored", "n1"), "/api/v1/nodes/n1");
  EXPECT_EQ(resources::kLeases.ApiVersion(), "coordination.k8s.io/v1");
  EXPECT_EQ(resources::kPods.ApiVersion(), "v1");
  Resource widgets{"test.pgshift.dev", "v1", "widgets", true, "Widget"};
  EXPECT_EQ(widgets.Path("x", "w/1"), "/apis/test.pgshift.dev/v1/namespaces/x/widgets/w%2F1");
}

TEST(ResourceTest, QueryString) {
  EXPECT_EQ(QueryString({}), "");
  EXPECT_EQ(QueryString({{"a", ""}, {"b", ""}}), "");
  EXPECT_EQ(QueryString({{"labelSelector", "app=pg,tier in (db)"}, {"limit", "5"}}),
            "?labelSelector=app%3Dpg%2Ctier%20in%20%28db%29&limit=5");
}

}  // namespace
}  // namespace pgshift::k8s
