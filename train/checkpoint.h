// Checkpoints in the global (unsharded) layout, so a run saved at one (dp, tp, ep) resumes at
// another. Each parameter's fp32 masters and Adam m and v are stored as whole global tensors
// (train/checkpoint_format.h has the file layout); every rank writes and reads only its own
// block of each with MPI-IO, staged through host memory.
//
// Saving writes "<dir>/step_<N>.ckpt.tmp", checksums it by reading it back, and only then renames
// it to "<dir>/step_<N>.ckpt" and deletes the oldest beyond `keep`: a crash leaves at worst a
// .tmp that latest_checkpoint ignores, never a partial file under a final name, and the previous
// checkpoint is removed only once the new one is complete.
//
// Every function here except latest_checkpoint and checkpoint_path is collective over
// MPI_COMM_WORLD. A bad file raises the same ErrorKind::checkpoint error on every rank, naming the
// file and what was wrong.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>

#include "parallel/distributed_optimizer.h"
#include "parallel/parameter.h"
#include "train/data_loader.h"

namespace sy {

// What a checkpoint holds besides the tensors. The optimizer's step count is `step`: AdamW's
// bias correction is driven by the step number the trainer passes.
struct CheckpointState {
  std::int64_t step = 0;    // optimizer steps completed
  DataPosition data;        // where the batch source resumes
  std::uint64_t seed = 0;   // the run seed; with the step it is the whole (counter-based) RNG state
  std::string config_yaml;  // the run's configuration, for the record (rank 0's copy is saved)
};

// "<dir>/step_<step>.ckpt"
std::string checkpoint_path(const std::string& dir, std::int64_t step);

// `job`: the ranks of this training job (all of them call; MPI_COMM_WORLD for a normal launch).
// Writes the registry's masters and the optimizer's Adam state at checkpoint_path(dir, state.step),
// creating `dir` if needed, then keeps the newest `keep` checkpoints in dir (keep <= 0: all).
// Returns the path.
std::string save_checkpoint(const std::string& dir, int keep, const CheckpointState& state,
                            const ParameterRegistry& registry, DistributedOptimizer& optimizer,
                            MPI_Comm job = MPI_COMM_WORLD);

// Verifies the file (magic, version, checksums, every registered parameter present with its
// global shape and, when trainable, its Adam state), then fills this rank's masters, compute
// copies and Adam state, whatever layout wrote it. The model state is untouched when the
// verification fails.
CheckpointState load_checkpoint(const std::string& path, ParameterRegistry& registry,
                                DistributedOptimizer& optimizer, MPI_Comm job = MPI_COMM_WORLD);

// The complete checkpoint with the highest step in `dir` ("" when there is none or no dir), for
// `checkpoint.resume: auto`. Leftover .tmp files are not complete checkpoints.
std::string latest_checkpoint(const std::string& dir);

}  // namespace sy
