// Weight shards of the tensor-parallel linears, on one process: rows for column-parallel,
// columns for row-parallel, and the checks on parts that do not divide.
#include "parallel/tp_linear.h"
#include "tests/testing.h"

namespace sy::test {
namespace {

TEST(WeightShard, RowShardsAreConsecutiveBlocksOfRows) {
  OwnedTensor full = random_tensor({8, 3}, DType::f64, Device::cpu, 1);
  const std::vector<double> fv = to_vector(full);
  for (int index = 0; index < 4; ++index) {
    OwnedTensor shard({2, 3}, DType::f64, Device::cpu);
    poison(shard);
    copy_weight_shard(full, shard, ShardAxis::rows, index, 4);
    const std::vector<double> expected(fv.begin() + index * 6, fv.begin() + (index + 1) * 6);
    EXPECT_EQ(to_vector(shard), expected) << "part " << index;
  }
}

TEST(WeightShard, ColumnShardsTakeTheSameColumnsOfEveryRow) {
  const std::int64_t out = 5, in = 12, parts = 3, cols = in / parts;
  OwnedTensor full = random_tensor({out, in}, DType::f32, Device::cpu, 2);
  const std::vector<double> fv = to_vector(full);
  for (int index = 0; index < parts; ++index) {
    OwnedTensor shard({out, cols}, DType::f32, Device::cpu);
    poison(shard);
    copy_weight_shard(full, shard, ShardAxis::columns, index, int(parts));
    std::vector<double> expected;
    for (std::int64_t r = 0; r < out; ++r) {
      for (std::int64_t c = 0; c < cols; ++c) expected.push_back(fv[std::size_t(r * in + index * cols + c)]);
    }
    EXPECT_EQ(to_vector(shard), expected) << "part " << index;
  }
}

TEST(WeightShard, RejectsPartsThatDoNotDivideTheSplitAxis) {
  OwnedTensor full({6, 4}, DType::f32, Device::cpu), shard({6, 1}, DType::f32, Device::cpu);
  expect_error([&] { copy_weight_shard(full, shard, ShardAxis::columns, 0, 3); },
               "copy_weight_shard: 3 parts do not divide the columns of f32[6, 4] cpu");
  OwnedTensor wrong({3, 4}, DType::f32, Device::cpu);
  expect_error([&] { copy_weight_shard(full, wrong, ShardAxis::rows, 0, 3); },
               "copy_weight_shard: shard must have shape [2, 4], got f32[3, 4] cpu");
  expect_error([&] { copy_weight_shard(full, wrong, ShardAxis::rows, 2, 2); },
               "copy_weight_shard: part 2 of 2 does not exist");
}

}  // namespace
}  // namespace sy::test
