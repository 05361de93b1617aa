// The checkpoint header: it round-trips, offsets are aligned and disjoint, and every way a file
// can be wrong (not ours, another version, cut short, a flipped byte) is named in the error.
#include "train/checkpoint_format.h"

#include <cstring>

#include "tests/testing.h"

namespace sy::test {
namespace {

CheckpointHeader sample_header() {
  CheckpointHeader h;
  h.step = 20;
  h.data_epoch = 1;
  h.data_step = 7;
  h.seed = 1234;
  h.config_bytes = 11;
  h.config_checksum = fnv1a64("model: {}\n_");
  CheckpointEntry qkv;
  qkv.name = "blocks.0.attn.qkv.weight";
  qkv.shape = {96, 32};
  qkv.slots = 3;
  qkv.checksums[0] = 1;
  qkv.checksums[1] = 2;
  qkv.checksums[2] = 3;
  CheckpointEntry cos;
  cos.name = "rope.cos";
  cos.shape = {5};
  cos.slots = 1;
  cos.checksums[0] = 42;
  h.entries = {qkv, cos};
  plan_checkpoint_layout(h);
  return h;
}

TEST(CheckpointFormat, HeaderRoundTrips) {
  const CheckpointHeader h = sample_header();
  const std::string bytes = encode_checkpoint_header(h);
  ASSERT_EQ(bytes.size(), h.header_bytes);
  EXPECT_EQ(checkpoint_header_bytes(std::string_view(bytes).substr(0, kCheckpointFixedBytes), h.file_bytes, "f"),
            h.header_bytes);
  const CheckpointHeader back = decode_checkpoint_header(bytes, h.file_bytes, "f");
  EXPECT_EQ(back.step, 20);
  EXPECT_EQ(back.data_epoch, 1);
  EXPECT_EQ(back.data_step, 7);
  EXPECT_EQ(back.seed, 1234u);
  EXPECT_EQ(back.config_offset, h.config_offset);
  EXPECT_EQ(back.config_bytes, 11u);
  EXPECT_EQ(back.config_checksum, h.config_checksum);
  ASSERT_EQ(back.entries.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    const CheckpointEntry &a = back.entries[i], &b = h.entries[i];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.shape, b.shape);
    EXPECT_EQ(a.slots, b.slots);
    EXPECT_EQ(a.offset, b.offset);
    for (int s = 0; s < a.slots; ++s) EXPECT_EQ(a.checksums[s], b.checksums[s]) << a.name << " slot " << s;
  }
  EXPECT_EQ(back.find("rope.cos"), &back.entries[1]);
  EXPECT_EQ(back.find("nope"), nullptr);
}

TEST(CheckpointFormat, TensorsFollowTheHeaderAlignedAndDisjoint) {
  const CheckpointHeader h = sample_header();
  const CheckpointEntry &qkv = h.entries[0], &cos = h.entries[1];
  EXPECT_EQ(qkv.offset, 4096u);  // the first block boundary after a small header
  EXPECT_EQ(qkv.slot_bytes(), 96u * 32 * 4);
  EXPECT_EQ(qkv.slot_offset(2), qkv.offset + 2 * qkv.slot_bytes());
  EXPECT_GE(cos.offset, qkv.slot_offset(3));
  EXPECT_EQ(cos.offset % 256, 0u);
  EXPECT_EQ(h.config_offset, cos.offset + 256);  // 20 bytes of rope.cos, padded
  EXPECT_EQ(h.file_bytes, h.config_offset + 11);
}

TEST(CheckpointFormat, OffsetsDependOnlyOnNamesShapesAndSlots) {
  CheckpointHeader a = sample_header(), b = sample_header();
  b.step = 999999;
  b.seed = 7;
  b.entries[0].checksums[1] = ~0ull;
  plan_checkpoint_layout(b);
  for (std::size_t i = 0; i < a.entries.size(); ++i) EXPECT_EQ(a.entries[i].offset, b.entries[i].offset);
  EXPECT_EQ(a.header_bytes, b.header_bytes);
}

TEST(CheckpointFormat, RejectsAFileThatIsNotACheckpoint) {
  expect_error([] { checkpoint_header_bytes("hello world, this is a text file", 32, "notes.txt"); },
               ErrorKind::checkpoint, "notes.txt: not a switchyard checkpoint");
  expect_error([] { checkpoint_header_bytes("", 0, "empty.ckpt"); }, ErrorKind::checkpoint,
               "empty.ckpt: not a switchyard checkpoint");
}

TEST(CheckpointFormat, RejectsAnotherVersion) {
  const CheckpointHeader h = sample_header();
  std::string bytes = encode_checkpoint_header(h);
  const std::uint32_t version = 2;
  std::memcpy(bytes.data() + 8, &version, sizeof(version));
  expect_error([&] { checkpoint_header_bytes(bytes, h.file_bytes, "step_20.ckpt"); }, ErrorKind::checkpoint,
               "step_20.ckpt: format version 2 is not supported (this build reads version 1)");
}

TEST(CheckpointFormat, RejectsTruncatedFiles) {
  const CheckpointHeader h = sample_header();
  const std::string bytes = encode_checkpoint_header(h);
  expect_error([&] { checkpoint_header_bytes(bytes.substr(0, 50), 50, "step_20.ckpt"); }, ErrorKind::checkpoint,
               "step_20.ckpt: truncated: 50 bytes");
  expect_error([&] { checkpoint_header_bytes(bytes, 200, "step_20.ckpt"); }, ErrorKind::checkpoint,
               "step_20.ckpt: truncated: 200 bytes, but the header alone is");
  expect_error([&] { decode_checkpoint_header(bytes, h.file_bytes - 1, "step_20.ckpt"); }, ErrorKind::checkpoint,
               "step_20.ckpt: truncated: the file has " + std::to_string(h.file_bytes - 1) +
                   " bytes but its header says " + std::to_string(h.file_bytes));
}

TEST(CheckpointFormat, AnyFlippedHeaderByteFailsTheChecksum) {
  const CheckpointHeader h = sample_header();
  const std::string bytes = encode_checkpoint_header(h);
  // Past the magic, version and size fields, which have their own checks.
  for (std::size_t at : {std::size_t(24), std::size_t(40), std::size_t(100), bytes.size() - 1}) {
    std::string bad = bytes;
    bad[at] = char(bad[at] ^ 0x10);
    expect_error([&] { decode_checkpoint_header(bad, h.file_bytes, "step_20.ckpt"); }, ErrorKind::checkpoint,
                 "step_20.ckpt: header checksum mismatch");
  }
}

TEST(CheckpointFormat, FnvIsTheSameInPieces) {
  const std::string text = "the quick brown fox jumps over the lazy dog";
  Fnv1a64 pieces;
  pieces.update(text.data(), 10);
  pieces.update(text.data() + 10, text.size() - 10);
  EXPECT_EQ(pieces.value(), fnv1a64(text));
  EXPECT_EQ(fnv1a64(""), 14695981039346656037ull);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cull);  // the published FNV-1a 64 test vector
}

}  // namespace
}  // namespace sy::test
