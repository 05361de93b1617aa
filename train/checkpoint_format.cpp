// Checkpoint header encoding and the checks a loader runs before trusting any offset in it.
#include "train/checkpoint_format.h"

#include <bit>
#include <cstring>

#include "core/check.h"

namespace sy {
namespace {

static_assert(std::endian::native == std::endian::little, "checkpoints store integers little-endian");

constexpr std::uint64_t kDataAlignment = 4096;  // file-system blocks: writes of distinct tensors never share one
constexpr std::uint64_t kEntryAlignment = 256;
constexpr std::size_t kChecksumField = 24;
constexpr std::uint8_t kDTypeF32 = 1;

std::uint64_t align_up(std::uint64_t n, std::uint64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

class Writer {
 public:
  template <class T>
  void put(T value) {
    char raw[sizeof(T)];
    std::memcpy(raw, &value, sizeof(T));
    bytes_.append(raw, sizeof(T));
  }
  void put_bytes(std::string_view s) { bytes_.append(s); }
  std::string& bytes() { return bytes_; }

 private:
  std::string bytes_;
};

// Bounds-checked reads; running past the end is a malformed header.
class Reader {
 public:
  Reader(std::string_view bytes, std::size_t at, const std::string& file) : bytes_(bytes), at_(at), file_(file) {}
  template <class T>
  T get() {
    T value;
    std::memcpy(&value, take(sizeof(T)), sizeof(T));
    return value;
  }
  std::string_view get_bytes(std::size_t count) { return {take(count), count}; }
  std::size_t at() const { return at_; }

 private:
  const char* take(std::size_t count) {
    SY_INPUT_CHECK(ErrorKind::checkpoint, count <= bytes_.size() - at_)
        << file_ << ": malformed header: the table runs past its end (" << bytes_.size() << " bytes)";
    const char* p = bytes_.data() + at_;
    at_ += count;
    return p;
  }
  std::string_view bytes_;
  std::size_t at_;
  const std::string& file_;
};

void encode_entry(Writer& w, const CheckpointEntry& e) {
  w.put(std::uint16_t(e.name.size()));
  w.put_bytes(e.name);
  w.put(kDTypeF32);
  w.put(std::uint8_t(e.slots));
  w.put(std::uint8_t(e.shape.size()));
  for (std::int64_t extent : e.shape) w.put(extent);
  w.put(e.offset);
  for (int s = 0; s < e.slots; ++s) w.put(e.checksums[s]);
}

}  // namespace

const char* checkpoint_slot_name(int slot) {
  static const char* const names[kMaxCheckpointSlots] = {"master", "adam_m", "adam_v"};
  return slot >= 0 && slot < kMaxCheckpointSlots ? names[slot] : "?";
}

void Fnv1a64::update(const void* bytes, std::size_t count) {
  const auto* p = static_cast<const unsigned char*>(bytes);
  std::uint64_t h = hash_;
  for (std::size_t i = 0; i < count; ++i) h = (h ^ p[i]) * 1099511628211ull;
  hash_ = h;
}

std::uint64_t fnv1a64(std::string_view bytes) {
  Fnv1a64 hash;
  hash.update(bytes.data(), bytes.size());
  return hash.value();
}

std::int64_t CheckpointEntry::numel() const {
  std::int64_t n = 1;
  for (std::int64_t extent : shape) n *= extent;
  return n;
}

const CheckpointEntry* CheckpointHeader::find(const std::string& name) const {
  for (const CheckpointEntry& e : entries)
    if (e.name == name) return &e;
  return nullptr;
}

void plan_checkpoint_layout(CheckpointHeader& header) {
  // Offsets and checksums are fixed-width, so the header's size does not depend on their values.
  header.header_bytes = encode_checkpoint_header(header).size();
  std::uint64_t at = align_up(header.header_bytes, kDataAlignment);
  for (CheckpointEntry& e : header.entries) {
    e.offset = at;
    at = align_up(e.slot_offset(e.slots), kEntryAlignment);
  }
  header.config_offset = at;
  header.file_bytes = at + header.config_bytes;
}

std::string encode_checkpoint_header(const CheckpointHeader& h) {
  Writer w;
  w.put_bytes({kCheckpointMagic, sizeof(kCheckpointMagic)});
  w.put(h.version);
  w.put(std::uint32_t(h.entries.size()));
  w.put(std::uint64_t(0));  // header bytes, patched below
  w.put(std::uint64_t(0));  // header checksum, patched below
  w.put(h.step);
  w.put(h.data_epoch);
  w.put(h.data_step);
  w.put(h.seed);
  w.put(h.config_offset);
  w.put(h.config_bytes);
  w.put(h.config_checksum);
  w.put(h.file_bytes);
  for (const CheckpointEntry& e : h.entries) encode_entry(w, e);
  std::string& bytes = w.bytes();
  const std::uint64_t size = bytes.size();
  std::memcpy(bytes.data() + 16, &size, sizeof(size));
  const std::uint64_t checksum = fnv1a64(bytes);
  std::memcpy(bytes.data() + kChecksumField, &checksum, sizeof(checksum));
  return bytes;
}

std::uint64_t checkpoint_header_bytes(std::string_view fixed, std::uint64_t file_bytes, const std::string& file) {
  SY_INPUT_CHECK(ErrorKind::checkpoint,
                 fixed.size() >= sizeof(kCheckpointMagic) &&
                     std::memcmp(fixed.data(), kCheckpointMagic, sizeof(kCheckpointMagic)) == 0)
      << file << ": not a switchyard checkpoint (no SYCKPT magic at the start)";
  SY_INPUT_CHECK(ErrorKind::checkpoint, fixed.size() >= kCheckpointFixedBytes && file_bytes >= kCheckpointFixedBytes)
      << file << ": truncated: " << file_bytes << " bytes, shorter than the " << kCheckpointFixedBytes
      << "-byte fixed header";
  Reader r(fixed, sizeof(kCheckpointMagic), file);
  const auto version = r.get<std::uint32_t>();
  SY_INPUT_CHECK(ErrorKind::checkpoint, version == kCheckpointVersion)
      << file << ": format version " << version << " is not supported (this build reads version "
      << kCheckpointVersion << ")";
  r.get<std::uint32_t>();
  const auto header_bytes = r.get<std::uint64_t>();
  SY_INPUT_CHECK(ErrorKind::checkpoint, header_bytes >= kCheckpointFixedBytes)
      << file << ": malformed header: header size " << header_bytes << " is smaller than its fixed part";
  SY_INPUT_CHECK(ErrorKind::checkpoint, header_bytes <= file_bytes)
      << file << ": truncated: " << file_bytes << " bytes, but the header alone is " << header_bytes;
  return header_bytes;
}

CheckpointHeader decode_checkpoint_header(std::string_view bytes, std::uint64_t file_bytes, const std::string& file) {
  const std::uint64_t header_bytes = checkpoint_header_bytes(bytes, file_bytes, file);
  SY_INPUT_CHECK(ErrorKind::checkpoint, bytes.size() == header_bytes)
      << file << ": truncated: the header is " << header_bytes << " bytes, " << bytes.size() << " were read";
  std::string zeroed(bytes);
  std::memset(zeroed.data() + kChecksumField, 0, sizeof(std::uint64_t));
  std::uint64_t stored = 0;
  std::memcpy(&stored, bytes.data() + kChecksumField, sizeof(stored));
  SY_INPUT_CHECK(ErrorKind::checkpoint, fnv1a64(zeroed) == stored)
      << file << ": header checksum mismatch: the header is corrupt";

  CheckpointHeader h;
  Reader r(bytes, sizeof(kCheckpointMagic), file);
  h.version = r.get<std::uint32_t>();
  const auto count = r.get<std::uint32_t>();
  h.header_bytes = r.get<std::uint64_t>();
  r.get<std::uint64_t>();
  h.step = r.get<std::int64_t>();
  h.data_epoch = r.get<std::int64_t>();
  h.data_step = r.get<std::int64_t>();
  h.seed = r.get<std::uint64_t>();
  h.config_offset = r.get<std::uint64_t>();
  h.config_bytes = r.get<std::uint64_t>();
  h.config_checksum = r.get<std::uint64_t>();
  h.file_bytes = r.get<std::uint64_t>();
  // A file of the wrong size with a valid header was cut short (or appended to) after writing.
  SY_INPUT_CHECK(ErrorKind::checkpoint, h.file_bytes == file_bytes)
      << file << ": " << (file_bytes < h.file_bytes ? "truncated: " : "") << "the file has " << file_bytes
      << " bytes but its header says " << h.file_bytes;
  SY_INPUT_CHECK(ErrorKind::checkpoint, h.config_offset >= header_bytes && h.config_offset <= h.file_bytes &&
                                            h.config_bytes == h.file_bytes - h.config_offset)
      << file << ": malformed header: config text at [" << h.config_offset << ", +" << h.config_bytes
      << ") does not end the file";
  for (std::uint32_t i = 0; i < count; ++i) {
    CheckpointEntry e;
    e.name = std::string(r.get_bytes(r.get<std::uint16_t>()));
    const auto dtype = r.get<std::uint8_t>();
    e.slots = r.get<std::uint8_t>();
    const auto axes = r.get<std::uint8_t>();
    SY_INPUT_CHECK(ErrorKind::checkpoint, dtype == kDTypeF32)
        << file << ": parameter " << e.name << " has dtype code " << int(dtype) << "; only f32 (1) is supported";
    SY_INPUT_CHECK(ErrorKind::checkpoint, e.slots == 1 || e.slots == kMaxCheckpointSlots)
        << file << ": malformed header: parameter " << e.name << " has " << e.slots << " slots (1 or 3)";
    SY_INPUT_CHECK(ErrorKind::checkpoint, axes >= 1 && axes <= Tensor::kMaxDims)
        << file << ": malformed header: parameter " << e.name << " has " << int(axes) << " axes";
    std::uint64_t numel = 1;
    for (int a = 0; a < axes; ++a) {
      const auto extent = r.get<std::int64_t>();
      SY_INPUT_CHECK(ErrorKind::checkpoint, extent > 0 && std::uint64_t(extent) <= file_bytes / sizeof(float) / numel)
          << file << ": malformed header: parameter " << e.name << " has extent " << extent << " on axis " << a;
      numel *= std::uint64_t(extent);
      e.shape.push_back(extent);
    }
    e.offset = r.get<std::uint64_t>();
    for (int s = 0; s < e.slots; ++s) e.checksums[s] = r.get<std::uint64_t>();
    SY_INPUT_CHECK(ErrorKind::checkpoint, e.offset >= header_bytes && e.offset <= h.config_offset &&
                                              std::uint64_t(e.slots) * e.slot_bytes() <= h.config_offset - e.offset)
        << file << ": malformed header: parameter " << e.name << " lies outside the tensor data";
    SY_INPUT_CHECK(ErrorKind::checkpoint, h.find(e.name) == nullptr)
        << file << ": malformed header: parameter " << e.name << " appears twice";
    h.entries.push_back(std::move(e));
  }
  SY_INPUT_CHECK(ErrorKind::checkpoint, r.at() == header_bytes)
      << file << ": malformed header: " << header_bytes - r.at() << " bytes follow the table";
  return h;
}

}  // namespace sy
