// Tensor-parallel MLP (column-parallel then row-parallel, with and without GELU) at tp = world
// size against the unsharded computation that every rank also does with core ops: the same y
// and dx on every rank, and each rank's weight gradients equal its slice of the full ones, both
// added to an earlier micro-batch's (GradMode::accumulate) and written over NaN (overwrite).
#include <algorithm>

#include "parallel/tp_linear.h"
#include "tests/mpi_testing.h"

namespace sy::test {
namespace {

class TpLinear : public ::testing::TestWithParam<Device> {
 protected:
  void SetUp() override { SY_REQUIRE_BACKEND(GetParam()); }
  Communicator& tp() { return world(GetParam()); }
  Device device() const { return GetParam(); }
  // f64 on CPU, where the reference is near-exact; the CUDA ops take f32 or bf16.
  DType dtype() const { return device() == Device::cpu ? DType::f64 : DType::f32; }
  // f64: only the all-reduced sums are grouped differently from the serial ones.
  // f32 on GPU: cuBLAS may pick other kernels (summation orders) for the sharded shapes.
  double tolerance() const { return dtype() == DType::f64 ? 1e-12 : 1e-5; }
  // Weight gradients are stored in f32 whatever the activations are.
  double grad_tolerance() const { return std::max(tolerance(), 1e-6); }

  void check_mlp_matches_unsharded(bool with_gelu, GradMode mode);
};

// y = act(x W1^T) W2^T with W1: [d_ff, d_model] column-parallel and W2: [d_model, d_ff]
// row-parallel; act is GELU or the identity.
void TpLinear::check_mlp_matches_unsharded(bool with_gelu, GradMode mode) {
  Communicator& group = tp();
  const int parts = group.size(), rank = group.rank();
  const std::int64_t n = 7, d_model = 12, d_ff_local = 8, d_ff = d_ff_local * parts;
  const DType dt = dtype();
  const Device dev = device();

  // The same seeds on every rank, so every rank holds the same full problem.
  OwnedTensor x = random_tensor({n, d_model}, dt, dev, 11);
  OwnedTensor w1 = random_tensor({d_ff, d_model}, dt, dev, 12);
  OwnedTensor w2 = random_tensor({d_model, d_ff}, dt, dev, 13);
  OwnedTensor dy = random_tensor({n, d_model}, dt, dev, 14);
  // Gradients from an earlier micro-batch, so the test also sees that backward adds to them.
  OwnedTensor dw1_ref = random_tensor({d_ff, d_model}, DType::f32, dev, 15);
  OwnedTensor dw2_ref = random_tensor({d_model, d_ff}, DType::f32, dev, 16);

  // Shards cut before the reference backward updates the full gradients.
  OwnedTensor w1_local({d_ff_local, d_model}, dt, dev), w2_local({d_model, d_ff_local}, dt, dev);
  OwnedTensor dw1_local({d_ff_local, d_model}, DType::f32, dev), dw2_local({d_model, d_ff_local}, DType::f32, dev);
  copy_weight_shard(w1, w1_local, ShardAxis::rows, rank, parts);
  copy_weight_shard(w2, w2_local, ShardAxis::columns, rank, parts);
  if (mode == GradMode::accumulate) {
    copy_weight_shard(dw1_ref, dw1_local, ShardAxis::rows, rank, parts);
    copy_weight_shard(dw2_ref, dw2_local, ShardAxis::columns, rank, parts);
  } else {  // the first micro-batch: what the gradients held must not matter
    poison(dw1_local);
    poison(dw2_local);
  }
  const float beta = grad_beta(mode);

  // Unsharded reference.
  OwnedTensor h({n, d_ff}, dt, dev), a({n, d_ff}, dt, dev), y_ref({n, d_model}, dt, dev);
  OwnedTensor da({n, d_ff}, dt, dev), dh({n, d_ff}, dt, dev), dx_ref({n, d_model}, dt, dev);
  const Tensor& act = with_gelu ? a.view() : h.view();
  const Tensor& dpre = with_gelu ? dh.view() : da.view();
  gemm(x, w1, h, false, true);
  if (with_gelu) gelu_forward(h, a);
  gemm(act, w2, y_ref, false, true);
  gemm(dy, w2, da, false, false);
  gemm(dy, act, dw2_ref, true, false, 1.0f, beta);
  if (with_gelu) gelu_backward(h, da, dh);
  gemm(dpre, w1, dx_ref, false, false);
  gemm(dpre, x, dw1_ref, true, false, 1.0f, beta);

  // Tensor parallel: this rank's d_ff slice of the hidden activations.
  OwnedTensor h_local({n, d_ff_local}, dt, dev), a_local({n, d_ff_local}, dt, dev), y({n, d_model}, dt, dev);
  OwnedTensor da_local({n, d_ff_local}, dt, dev), dh_local({n, d_ff_local}, dt, dev), dx({n, d_model}, dt, dev);
  for (const OwnedTensor* out : {&h_local, &a_local, &y, &da_local, &dh_local, &dx}) poison(*out);
  const Tensor& act_local = with_gelu ? a_local.view() : h_local.view();
  const Tensor& dpre_local = with_gelu ? dh_local.view() : da_local.view();
  column_parallel_forward(group, x, w1_local, h_local);
  if (with_gelu) gelu_forward(h_local, a_local);
  row_parallel_forward(group, act_local, w2_local, y);
  row_parallel_backward(group, act_local, w2_local, dy, da_local, dw2_local, mode);
  if (with_gelu) gelu_backward(h_local, da_local, dh_local);
  column_parallel_backward(group, x, w1_local, dpre_local, dx, dw1_local, mode);
  device_synchronize();

  EXPECT_LT(relative_error(y, y_ref), tolerance());
  EXPECT_LT(relative_error(dx, dx_ref), tolerance());
  OwnedTensor dw1_slice({d_ff_local, d_model}, DType::f32, dev), dw2_slice({d_model, d_ff_local}, DType::f32, dev);
  copy_weight_shard(dw1_ref, dw1_slice, ShardAxis::rows, rank, parts);
  copy_weight_shard(dw2_ref, dw2_slice, ShardAxis::columns, rank, parts);
  device_synchronize();
  EXPECT_LT(relative_error(dw1_local, dw1_slice), grad_tolerance());
  EXPECT_LT(relative_error(dw2_local, dw2_slice), grad_tolerance());
}

TEST_P(TpLinear, MlpWithoutActivationMatchesUnsharded) { check_mlp_matches_unsharded(false, GradMode::accumulate); }

TEST_P(TpLinear, MlpWithGeluMatchesUnsharded) { check_mlp_matches_unsharded(true, GradMode::accumulate); }

TEST_P(TpLinear, MlpOverwritesWeightGradients) {
  check_mlp_matches_unsharded(false, GradMode::overwrite);
  check_mlp_matches_unsharded(true, GradMode::overwrite);
}

TEST_P(TpLinear, RejectsWeightOfAnotherWidth) {
  OwnedTensor x({7, 12}, DType::f32, device()), w({8, 10}, DType::f32, device()), y({7, 8}, DType::f32, device());
  expect_error([&] { column_parallel_forward(tp(), x, w, y); },
               std::string("column_parallel_forward: x has 12 features but weight f32[8, 10] ") +
                   device_name(device()) + " expects 10");
}

TEST_P(TpLinear, RejectsTensorsOnAnotherDeviceThanTheGroup) {
  const Device other = device() == Device::cpu ? Device::cuda : Device::cpu;
  if (other == Device::cuda && !nccl_available()) GTEST_SKIP() << "no GPU for the mismatched tensors";
  OwnedTensor x({7, 12}, DType::f32, other), w({12, 12}, DType::f32, other), y({7, 12}, DType::f32, other);
  expect_error([&] { row_parallel_forward(tp(), x, w, y); },
               std::string("row_parallel_forward: tensors are on ") + device_name(other) + " but group " +
                   tp().name() + " moves " + device_name(device()) + " tensors");
}

INSTANTIATE_TEST_SUITE_P(Backends, TpLinear, ::testing::Values(Device::cpu, Device::cuda), device_param_name);

}  // namespace
}  // namespace sy::test
