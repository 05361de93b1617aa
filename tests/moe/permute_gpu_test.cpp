// MoE row movements on CUDA against the CPU reference, random routings with drops.
#include "moe/permute.h"
#include "tests/testing.h"

namespace sy::test {
namespace {

struct RandomRouting {
  OwnedTensor expert, slot, gate, counts;
};

// Random choices (k distinct experts per token), position-policy slots, drops past capacity.
RandomRouting make(std::int64_t tokens, int k, int experts, std::int64_t capacity, std::uint64_t seed, Device device) {
  std::vector<double> expert(std::size_t(tokens * k)), slot(expert.size()), gate(expert.size()), counts(std::size_t(experts), 0);
  for (std::int64_t n = 0; n < tokens; ++n) {
    const std::uint32_t r = philox4x32(RngKey{seed, 99, 0}, std::uint64_t(n)).v[0];
    for (int j = 0; j < k; ++j) {
      expert[std::size_t(n * k + j)] = double((r + std::uint32_t(j) * 3) % std::uint32_t(experts));
      gate[std::size_t(n * k + j)] = 1.0 / (j + 2);
    }
  }
  for (int j = 0; j < k; ++j)
    for (std::int64_t n = 0; n < tokens; ++n) {
      const std::size_t c = std::size_t(n * k + j);
      double& count = counts[std::size_t(expert[c])];
      slot[c] = (capacity == 0 || count < double(capacity)) ? count : -1;
      if (slot[c] >= 0) count += 1;
    }
  // The f64 CPU reference takes f64 gates (moe/permute.h); the GPU takes f32.
  const DType gate_dtype = device == Device::cpu ? DType::f64 : DType::f32;
  RandomRouting out{OwnedTensor({tokens, k}, DType::i32, device), OwnedTensor({tokens, k}, DType::i32, device),
                    OwnedTensor({tokens, k}, gate_dtype, device), OwnedTensor({experts}, DType::i32, device)};
  from_vector(out.expert, expert);
  from_vector(out.slot, slot);
  from_vector(out.gate, gate);
  from_vector(out.counts, counts);
  return out;
}

class MoePermuteGpu : public ::testing::TestWithParam<DType> {};

TEST_P(MoePermuteGpu, EveryMovementMatchesCpuReference) {
  SY_REQUIRE_GPU();
  const DType dt = GetParam();
  // 64 and 1040 move as 16-byte vectors (1040 takes two passes of a block); 67: the element-wise
  // paths, and the 4-byte (f32) and 2-byte (bf16) regroup paths.
  for (std::int64_t width : {64, 67, 1040}) {
    for (std::int64_t capacity : {0, 70}) {
      SCOPED_TRACE(::testing::Message() << "d=" << width << " capacity=" << capacity);
      const std::int64_t tokens = 300, experts = 8;
      const int k = 2;
      RandomRouting gpu = make(tokens, k, int(experts), capacity, 5, Device::cuda);
      RandomRouting cpu = make(tokens, k, int(experts), capacity, 5, Device::cpu);
      OwnedTensor offsets_gpu({experts + 1}, DType::i32, Device::cuda), offsets_cpu({experts + 1}, DType::i32, Device::cpu);
      poison(offsets_gpu);
      moe_expert_offsets(gpu.counts, capacity, offsets_gpu);
      moe_expert_offsets(cpu.counts, capacity, offsets_cpu);
      device_synchronize();
      ASSERT_EQ(to_vector(offsets_gpu), to_vector(offsets_cpu));
      const std::int64_t rows = std::int64_t(to_vector(offsets_cpu).back());

      OwnedTensor x = random_tensor({tokens, width}, dt, Device::cuda, 7);
      OwnedTensor xc = convert(x, DType::f64, Device::cpu);
      OwnedTensor send = zeros({rows, width}, dt, Device::cuda), sendc = zeros({rows, width}, DType::f64, Device::cpu);
      moe_scatter_rows(x, gpu.expert, gpu.slot, offsets_gpu, send);
      moe_scatter_rows(xc, cpu.expert, cpu.slot, offsets_cpu, sendc);
      device_synchronize();
      EXPECT_EQ(relative_error(send, sendc), 0.0);  // pure copies

      OwnedTensor y = random_tensor({rows, width}, dt, Device::cuda, 8);
      OwnedTensor yc = convert(y, DType::f64, Device::cpu);
      OwnedTensor out({tokens, width}, dt, Device::cuda), outc({tokens, width}, DType::f64, Device::cpu);
      poison(out);
      moe_combine(y, gpu.expert, gpu.slot, offsets_gpu, gpu.gate, out);
      moe_combine(yc, cpu.expert, cpu.slot, offsets_cpu, cpu.gate, outc);
      OwnedTensor dx({tokens, width}, dt, Device::cuda), dxc({tokens, width}, DType::f64, Device::cpu);
      poison(dx);
      moe_gather_rows_sum(y, gpu.expert, gpu.slot, offsets_gpu, dx);
      moe_gather_rows_sum(yc, cpu.expert, cpu.slot, offsets_cpu, dxc);
      OwnedTensor dout = random_tensor({tokens, width}, dt, Device::cuda, 9);
      OwnedTensor doutc = convert(dout, DType::f64, Device::cpu);
      OwnedTensor dy({rows, width}, dt, Device::cuda), dyc({rows, width}, DType::f64, Device::cpu);
      OwnedTensor dgate({tokens, k}, DType::f32, Device::cuda), dgatec({tokens, k}, DType::f64, Device::cpu);
      poison(dy);
      poison(dgate);
      moe_combine_backward(dout, y, gpu.expert, gpu.slot, offsets_gpu, gpu.gate, dy, dgate);
      moe_combine_backward(doutc, yc, cpu.expert, cpu.slot, offsets_cpu, cpu.gate, dyc, dgatec);
      device_synchronize();
      // f32: summation order only; bf16: outputs rounded to 8 bits.
      const double tol = dt == DType::f32 ? 1e-6 : 1e-2;
      EXPECT_LT(relative_error(out, outc), tol);
      EXPECT_LT(relative_error(dx, dxc), tol);
      EXPECT_LT(relative_error(dy, dyc), tol);
      EXPECT_LT(relative_error(dgate, dgatec), dt == DType::f32 ? 1e-5 : 1e-2);

      // Regroup: 4 sources x 2 local experts with uneven counts, both directions.
      std::vector<double> block_counts{3, 0, 5, 7, 1, 2, 0, 4};
      OwnedTensor counts({4, 2}, DType::i32, Device::cuda), countsc({4, 2}, DType::i32, Device::cpu);
      from_vector(counts, block_counts);
      from_vector(countsc, block_counts);
      OwnedTensor in = random_tensor({22, width}, dt, Device::cuda, 10);
      OwnedTensor inc = convert(in, DType::f64, Device::cpu);
      for (bool to_expert_major : {true, false}) {
        OwnedTensor moved({22, width}, dt, Device::cuda), movedc({22, width}, DType::f64, Device::cpu);
        poison(moved);
        moe_regroup(in, RegroupBlocks::of(counts), moved, to_expert_major);
        moe_regroup(inc, RegroupBlocks::of(countsc), movedc, to_expert_major);
        device_synchronize();
        EXPECT_EQ(relative_error(moved, movedc), 0.0);
        // Capacity mode's uniform blocks: 4 x 2 blocks of 2 rows (16 of the 22), no counts tensor.
        OwnedTensor uniform({22, width}, dt, Device::cuda), uniformc({22, width}, DType::f64, Device::cpu);
        poison(uniform);
        poison(uniformc);
        moe_regroup(in, RegroupBlocks::uniform(4, 2, 2), uniform, to_expert_major);
        moe_regroup(inc, RegroupBlocks::uniform(4, 2, 2), uniformc, to_expert_major);
        device_synchronize();
        EXPECT_EQ(relative_error(convert(uniform, DType::f64, Device::cpu).view().slice_rows(0, 16),
                                 uniformc.view().slice_rows(0, 16)), 0.0);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, MoePermuteGpu, ::testing::Values(DType::f32, DType::bf16), dtype_param_name);

}  // namespace
}  // namespace sy::test
