// The checkpoint file layout: a binary header (fixed part, then one table entry per parameter),
// the tensors in the global (unsharded) layout, then the config text. Offsets depend only on the
// parameter names and global shapes, so every rank computes the same plan from its registry and
// writes its own slices at known places (train/checkpoint.cpp does the MPI-IO).
//
// Version 1, every integer little-endian:
//   fixed header, 96 bytes
//     [0, 8)    magic "SYCKPT\r\n" (the CR LF catches text-mode transfers)
//     [8, 12)   u32 format version (1)
//     [12, 16)  u32 entry count
//     [16, 24)  u64 header bytes: the fixed part plus the table
//     [24, 32)  u64 header checksum: FNV-1a 64 of the header bytes, this field read as zero
//     [32, 40)  i64 step            [40, 48) i64 data epoch      [48, 56) i64 data step
//     [56, 64)  u64 run seed (the RNG is counter-based: seed and step are its whole state)
//     [64, 72)  u64 config offset   [72, 80) u64 config bytes    [80, 88) u64 config checksum
//     [88, 96)  u64 file bytes (the config text ends the file)
//   table, one entry per parameter in registration order
//     u16 name bytes, the name (UTF-8, no terminator)
//     u8 dtype (1 = f32), u8 slots (1 = master; 3 = master, Adam m, Adam v), u8 axes
//     i64 global extent per axis
//     u64 offset of slot 0 (256-byte aligned); slot k starts at offset + k * slot bytes
//     u64 FNV-1a 64 checksum per slot
//   tensors from the first 4096-byte boundary after the header, C order, f32
//   config text (YAML, for the record)
// The header checksum covers the table and with it every tensor and config checksum, so one
// flipped byte anywhere in the file is caught.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"

namespace sy {

inline constexpr char kCheckpointMagic[8] = {'S', 'Y', 'C', 'K', 'P', 'T', '\r', '\n'};
inline constexpr std::uint32_t kCheckpointVersion = 1;
inline constexpr std::size_t kCheckpointFixedBytes = 96;
inline constexpr int kMaxCheckpointSlots = 3;

const char* checkpoint_slot_name(int slot);  // "master", "adam_m", "adam_v"

// FNV-1a 64, fed in pieces: the checksum of a tensor read in chunks equals that of one read.
class Fnv1a64 {
 public:
  void update(const void* bytes, std::size_t count);
  std::uint64_t value() const { return hash_; }

 private:
  std::uint64_t hash_ = 14695981039346656037ull;
};
std::uint64_t fnv1a64(std::string_view bytes);

struct CheckpointEntry {
  std::string name;
  Shape shape;            // global
  int slots = 1;          // 1: master only (frozen parameters); 3: master, Adam m, Adam v
  std::uint64_t offset = 0;
  std::uint64_t checksums[kMaxCheckpointSlots] = {};

  std::int64_t numel() const;
  std::uint64_t slot_bytes() const { return std::uint64_t(numel()) * sizeof(float); }
  std::uint64_t slot_offset(int slot) const { return offset + std::uint64_t(slot) * slot_bytes(); }
};

struct CheckpointHeader {
  std::uint32_t version = kCheckpointVersion;
  std::int64_t step = 0;
  std::int64_t data_epoch = 0;
  std::int64_t data_step = 0;
  std::uint64_t seed = 0;
  std::uint64_t header_bytes = 0;
  std::uint64_t config_offset = 0;
  std::uint64_t config_bytes = 0;
  std::uint64_t config_checksum = 0;
  std::uint64_t file_bytes = 0;
  std::vector<CheckpointEntry> entries;

  const CheckpointEntry* find(const std::string& name) const;
};

// Fills header_bytes, every entry's offset, config_offset and file_bytes from the entries'
// names, shapes and slots and config_bytes; checksums are left as they are.
void plan_checkpoint_layout(CheckpointHeader& header);
// The header bytes, header checksum included.
std::string encode_checkpoint_header(const CheckpointHeader& header);

// Reading is two steps: the fixed part says how long the whole header is. `file` names the
// checkpoint in errors (ErrorKind::checkpoint): not a checkpoint, an unknown version, truncated.
std::uint64_t checkpoint_header_bytes(std::string_view fixed, std::uint64_t file_bytes, const std::string& file);
// Parses and checks the whole header: checksum, table bounds, entry types, file size.
CheckpointHeader decode_checkpoint_header(std::string_view header, std::uint64_t file_bytes,
                                          const std::string& file);

}  // namespace sy
