// Routing: what the router hands to dispatch and combine for N local tokens, k choices each.
// This is the contract between moe/router.* (which fills it) and moe/dispatch.* (which moves
// tokens by it); both sides read only these tensors.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace sy {

struct Routing {
  std::int64_t tokens = 0;    // N: local tokens routed
  int top_k = 1;              // k
  int experts = 0;            // E: experts of the layer (all ranks)
  std::int64_t capacity = 0;  // C: kept choices per expert on this rank; 0 means dropless (no limit)

  Tensor expert;         // [N, k] i32: expert of each choice, in [0, E)
  Tensor gate;           // [N, k] f32: combine weight of each choice (0 contribution if dropped)
  Tensor slot;           // [N, k] i32: position of the choice in its expert's queue on this rank
                         //   (0-based, < C in capacity mode), or -1 if the choice was dropped
  Tensor expert_counts;  // [E] i32: kept choices per expert on this rank (<= C in capacity mode)
};

}  // namespace sy
