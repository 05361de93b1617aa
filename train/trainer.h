// The training loop: sets up devices, process grid, data, model and optimizer from a Config,
// runs the steps (micro-batches with gradient accumulation, clipping, AdamW, evaluation,
// checkpoints), and reports metrics: one line per logging step on rank 0, the same fields as
// JSON lines in <run.out_dir>/metrics.jsonl, a progress indicator with ETA, and a summary.
#pragma once

#include <string>
#include <vector>

#include "parallel/mpi_runtime.h"
#include "train/config.h"

namespace sy {

struct TrainResult {
  int steps_run = 0;
  double first_loss = 0;
  double final_loss = 0;
  double final_val_loss = -1;  // -1: no evaluation ran
  std::vector<double> losses;  // per step, every rank
};

// Collective over MPI_COMM_WORLD: every rank calls it. Ranks with the same `job` train one
// model together (tests run several layouts side by side; a launch uses one job).
TrainResult train(const Config& config, MpiRuntime& runtime, int job = 0);

// What `switchyard validate` prints for a good config at a world size: parameters, FLOPs per
// token, memory per rank and the rank layout.
std::string describe_run(const Config& config, int world_size);

}  // namespace sy
