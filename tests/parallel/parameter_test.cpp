// Parameter registry: flat layout, padding, bucket formation and the errors a model author sees.
#include "parallel/parameter.h"

#include "parallel/grad_sync.h"
#include "tests/testing.h"

namespace sy::test {
namespace {

constexpr std::int64_t kAlign = ParameterRegistry::kAlignElements;

ParameterSpec dense(const std::string& name, const Shape& shape) {
  ParameterSpec spec;
  spec.name = name;
  spec.global_shape = shape;
  return spec;
}

RegistryOptions options(std::size_t bucket_bytes, int dp_size = 1, int edp_size = 1) {
  RegistryOptions o;
  o.bucket_bytes = bucket_bytes;
  o.dp_size = dp_size;
  o.edp_size = edp_size;
  return o;
}

// Registers `count` dense parameters p0..p{count-1} of `numel` elements each.
void add_uniform(ParameterRegistry& registry, int count, std::int64_t numel) {
  for (int i = 0; i < count; ++i) {
    std::string name = "p";  // built in two steps: GCC 12 warns falsely (-Wrestrict) on "p" + to_string
    name += std::to_string(i);
    registry.add(dense(name, {numel}));
  }
}

std::vector<int> bucket_params(const ParameterRegistry& registry, int bucket) {
  return registry.group(ReduceGroup::dp).buckets[std::size_t(bucket)].params;
}

TEST(ParameterRegistry, LaysOutParametersInReverseOrderAtAlignedOffsets) {
  ParameterRegistry registry(options(1 << 20));
  Parameter& a = registry.add(dense("a", {10}));
  Parameter& b = registry.add(dense("b", {3, 5}));
  Parameter& c = registry.add(dense("c", {kAlign}));
  registry.allocate();
  EXPECT_EQ(c.offset(), 0);
  EXPECT_EQ(b.offset(), kAlign);
  EXPECT_EQ(a.offset(), 2 * kAlign);
  const ParameterGroup& group = registry.group(ReduceGroup::dp);
  EXPECT_EQ(group.numel, 3 * kAlign);
  for (const Parameter* p : {&a, &b, &c}) {
    EXPECT_EQ(p->master().data(), static_cast<float*>(group.master.data()) + p->offset()) << p->name();
    EXPECT_EQ(p->grad().data(), static_cast<float*>(group.grad.data()) + p->offset()) << p->name();
    EXPECT_EQ(p->master().shape(), p->global_shape()) << p->name();
  }
  EXPECT_FALSE(a.compute().defined());
}

TEST(ParameterRegistry, PadsEveryBucketToEqualAlignedShardsOfTheGroup) {
  for (int dp_size : {1, 2, 3, 4}) {
    ParameterRegistry registry(options(1 << 20, dp_size));
    registry.add(dense("w", {7, 30}));  // 210 elements
    registry.add(dense("b", {5}));
    registry.allocate();
    const ParameterGroup& group = registry.group(ReduceGroup::dp);
    ASSERT_EQ(group.buckets.size(), 1u);
    EXPECT_EQ(group.shard_parts, dp_size);
    EXPECT_EQ(group.numel % (kAlign * dp_size), 0) << "dp " << dp_size;
    EXPECT_GE(group.numel, 4 * kAlign + kAlign);  // 210 -> 256 aligned, then 5 -> 64
    EXPECT_LT(group.numel, 5 * kAlign + kAlign * dp_size);
  }
}

TEST(ParameterRegistry, FormsBucketsInReverseRegistrationOrder) {
  ParameterRegistry registry(options(2 * kAlign * sizeof(float)));
  add_uniform(registry, 5, kAlign);
  registry.allocate();
  const ParameterGroup& group = registry.group(ReduceGroup::dp);
  ASSERT_EQ(group.buckets.size(), 3u);
  EXPECT_EQ(bucket_params(registry, 0), (std::vector<int>{4, 3}));
  EXPECT_EQ(bucket_params(registry, 1), (std::vector<int>{2, 1}));
  EXPECT_EQ(bucket_params(registry, 2), (std::vector<int>{0}));
  std::int64_t offset = 0;
  for (const GradientBucket& bucket : group.buckets) {
    EXPECT_EQ(bucket.offset, offset);  // contiguous slices of the flat buffer, no gaps
    offset += bucket.numel;
  }
  EXPECT_EQ(offset, group.numel);
  EXPECT_EQ(registry.at("p4").bucket(), 0);
  EXPECT_EQ(registry.at("p0").bucket(), 2);
}

TEST(ParameterRegistry, BucketFillsUpToExactlyBucketBytes) {
  const std::size_t param_bytes = kAlign * sizeof(float);
  ParameterRegistry exact(options(3 * param_bytes));
  add_uniform(exact, 6, kAlign);
  exact.allocate();
  EXPECT_EQ(exact.group(ReduceGroup::dp).buckets.size(), 2u);
  EXPECT_EQ(bucket_params(exact, 0).size(), 3u);

  ParameterRegistry one_byte_less(options(3 * param_bytes - 1));
  add_uniform(one_byte_less, 6, kAlign);
  one_byte_less.allocate();
  EXPECT_EQ(one_byte_less.group(ReduceGroup::dp).buckets.size(), 3u);
  EXPECT_EQ(bucket_params(one_byte_less, 0).size(), 2u);
}

TEST(ParameterRegistry, NeverSplitsAParameterLargerThanABucket) {
  ParameterRegistry registry(options(2 * kAlign * sizeof(float)));
  registry.add(dense("small_first", {kAlign}));
  Parameter& big = registry.add(dense("big", {1000}));
  registry.add(dense("small_last", {kAlign}));
  registry.allocate();
  const ParameterGroup& group = registry.group(ReduceGroup::dp);
  ASSERT_EQ(group.buckets.size(), 3u);
  EXPECT_EQ(bucket_params(registry, 0), (std::vector<int>{2}));
  EXPECT_EQ(bucket_params(registry, 1), (std::vector<int>{1}));
  EXPECT_EQ(bucket_params(registry, 2), (std::vector<int>{0}));
  const GradientBucket& bucket = group.buckets[1];
  EXPECT_EQ(big.offset(), bucket.offset);
  EXPECT_GE(bucket.numel, big.numel());
}

TEST(ParameterRegistry, KeepsDenseExpertAndFrozenParametersInSeparateBuffers) {
  ParameterRegistry registry(options(1 << 20, 2, 3));
  Parameter& w = registry.add(dense("w", {8, 8}));
  ParameterSpec expert = dense("experts.w1", {4, 8, 6});
  expert.reduce = ReduceGroup::edp;
  expert.ep = {0, 2, 1};
  Parameter& e = registry.add(expert);
  ParameterSpec frozen = dense("rope.table", {16});
  frozen.reduce = ReduceGroup::none;
  Parameter& f = registry.add(frozen);
  registry.allocate();
  EXPECT_EQ(w.offset(), 0);
  EXPECT_EQ(e.offset(), 0);
  EXPECT_EQ(e.local_shape(), (Shape{2, 8, 6}));
  EXPECT_EQ(registry.group(ReduceGroup::edp).numel % (kAlign * 3), 0);
  EXPECT_EQ(registry.group(ReduceGroup::dp).numel % (kAlign * 2), 0);
  EXPECT_TRUE(f.master().defined());
  EXPECT_FALSE(registry.group(ReduceGroup::none).grad.defined());
  expect_error([&] { (void)f.grad(); }, "parameter rope.table is frozen (reduce group none) and has no gradient");
}

TEST(ParameterRegistry, LocalShapeDividesTheSplitAxes) {
  ParameterRegistry registry(options(1 << 20));
  ParameterSpec column = dense("qkv.weight", {8, 48});
  column.tp = {1, 4, 2};
  ParameterSpec expert = dense("experts.w1", {4, 8, 6});
  expert.reduce = ReduceGroup::edp;
  expert.tp = {2, 3, 0};
  expert.ep = {0, 2, 1};
  ParameterSpec replicated = dense("norm.weight", {8});
  replicated.tp = {-1, 4, 3};
  EXPECT_EQ(registry.add(column).local_shape(), (Shape{8, 12}));
  EXPECT_EQ(registry.add(expert).local_shape(), (Shape{2, 8, 2}));
  EXPECT_EQ(registry.add(replicated).local_shape(), (Shape{8}));
  EXPECT_EQ(registry.at("experts.w1").numel(), 32);
}

TEST(ParameterRegistry, ZeroGradsClearsAccumulatedGradients) {
  ParameterRegistry registry(options(1 << 20));
  Parameter& p = registry.add(dense("w", {3, 7}));
  registry.allocate();
  from_vector(p.grad(), std::vector<double>(21, 2.5));
  registry.zero_grads();
  for (double g : to_vector(registry.group(ReduceGroup::dp).grad)) EXPECT_EQ(g, 0.0);
}

TEST(ParameterRegistry, RefreshComputeCopiesRoundsMastersToBf16) {
  RegistryOptions o = options(1 << 20);
  o.compute_copy = true;
  ParameterRegistry registry(o);
  Parameter& p = registry.add(dense("w", {5, 3}));
  registry.allocate();
  ASSERT_EQ(p.compute().dtype(), DType::bf16);
  OwnedTensor values = random_tensor({5, 3}, DType::f32, Device::cpu, 11);
  copy(p.master(), values);
  registry.refresh_compute_copies();
  std::vector<double> master = to_vector(p.master()), compute = to_vector(p.compute());
  for (std::size_t i = 0; i < master.size(); ++i) EXPECT_EQ(compute[i], double(float(bfloat16(float(master[i])))));
}

TEST(ParameterRegistry, ShardSegmentsTileEveryBucket) {
  ParameterRegistry registry(options(2 * kAlign * sizeof(float), 4));
  add_uniform(registry, 5, 100);
  registry.allocate();
  const ParameterGroup& group = registry.group(ReduceGroup::dp);
  std::int64_t shard_offset = 0;
  for (int rank = 0; rank < 4; ++rank) {
    std::vector<ShardSegment> segments = shard_segments(group, rank);
    ASSERT_EQ(segments.size(), group.buckets.size());
    shard_offset = 0;
    for (const ShardSegment& s : segments) {
      const GradientBucket& bucket = group.buckets[std::size_t(s.bucket)];
      EXPECT_EQ(s.numel * 4, bucket.numel);
      EXPECT_EQ(s.flat_offset, bucket.offset + rank * s.numel);
      EXPECT_EQ(s.shard_offset, shard_offset);
      EXPECT_EQ(s.flat_offset % kAlign, 0);
      shard_offset += s.numel;
    }
  }
  EXPECT_EQ(shard_offset * 4, group.numel);
}

TEST(ParameterRegistry, RejectsInconsistentSpecs) {
  ParameterRegistry registry(options(1 << 20));
  registry.add(dense("blocks.0.attn.qkv.weight", {8, 24}));
  expect_error([&] { registry.add(dense("blocks.0.attn.qkv.weight", {8, 24})); },
               "parameter blocks.0.attn.qkv.weight is registered twice");
  ParameterSpec uneven = dense("head.weight", {10, 8});
  uneven.tp = {0, 4, 1};
  expect_error([&] { registry.add(uneven); },
               "parameter head.weight: tp splits axis 0 of size 10 into 4 parts, which does not divide it");
  ParameterSpec bad_axis = dense("b", {8});
  bad_axis.tp = {1, 2, 0};
  expect_error([&] { registry.add(bad_axis); }, "parameter b: tp axis 1 does not exist in global shape [8]");
  ParameterSpec bad_index = dense("c", {8});
  bad_index.tp = {0, 2, 2};
  expect_error([&] { registry.add(bad_index); }, "parameter c: tp index 2 is not in [0, 2)");
  ParameterSpec expert_over_dp = dense("experts.w2", {4, 8});
  expert_over_dp.ep = {0, 2, 0};
  expect_error([&] { registry.add(expert_over_dp); },
               "parameter experts.w2 is split over ep, so its gradient must be reduced over edp, not dp");
  expect_error([&] { registry.add(dense("", {4})); }, "a parameter needs a name");
  expect_error([&] { registry.add(dense("empty", {4, 0})); }, "parameter empty: global shape [4, 0] has an empty axis");
}

TEST(ParameterRegistry, RejectsUseOutsideItsLifecycle) {
  ParameterRegistry registry(options(1 << 20));
  Parameter& p = registry.add(dense("w", {4}));
  expect_error([&] { (void)p.master(); }, "parameter w has no storage yet: call ParameterRegistry::allocate first");
  registry.allocate();
  expect_error([&] { registry.add(dense("late", {4})); }, "cannot register late after allocate()");
  expect_error([&] { registry.at("missing"); }, "no parameter named missing");
  expect_error([&] { registry.allocate(); }, "allocate() called twice");
}

}  // namespace
}  // namespace sy::test
