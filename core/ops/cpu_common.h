// Shared pieces of the CPU reference ops: typed dispatch over the float dtypes. The reference
// reads every element as double (to_double) and writes through from_double<T>.
#pragma once

#include "core/check.h"
#include "core/tensor.h"

namespace sy::cpu {

// Calls fn with a typed null pointer for t's float dtype: float*, double* or bfloat16*.
template <class Fn>
void dispatch_float(const Tensor& t, Fn&& fn) {
  switch (t.dtype()) {
    case DType::f32: fn(static_cast<float*>(nullptr)); return;
    case DType::f64: fn(static_cast<double*>(nullptr)); return;
    case DType::bf16: fn(static_cast<bfloat16*>(nullptr)); return;
    default: SY_FAIL() << "CPU ops take f32, f64 or bf16, got " << t.describe();
  }
}

}  // namespace sy::cpu
