// Byte-level shard preparation and the fortunes corpus.
#include "train/prepare.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iterator>
#include <regex>
#include <sstream>

#include "core/check.h"
#include "train/token_shard.h"

namespace sy {
namespace {

namespace fs = std::filesystem;

std::string shard_name(const char* split, std::int64_t index) {
  std::ostringstream name;
  name << split << "_" << std::setw(6) << std::setfill('0') << index << ".bin";
  return name.str();
}

std::string without_fortune_separators(const std::string& text) {
  std::string kept;
  kept.reserve(text.size());
  std::size_t line_start = 0;
  while (line_start < text.size()) {
    const std::size_t newline = text.find('\n', line_start);
    const std::size_t line_end = newline == std::string::npos ? text.size() : newline + 1;
    const std::size_t content_end = newline == std::string::npos ? text.size() : newline;
    if (!(content_end - line_start == 1 && text[line_start] == '%')) {
      kept.append(text, line_start, line_end - line_start);
    }
    line_start = line_end;
  }
  return kept;
}

void write_split(const std::string& path, std::string_view bytes) {
  std::vector<std::uint16_t> tokens(bytes.size());
  std::transform(bytes.begin(), bytes.end(), tokens.begin(), [](char c) { return static_cast<unsigned char>(c); });
  write_token_shard(path, tokens);
}

// Shards named like ours but not part of this split (left by an earlier, larger prepare).
void remove_stale_shards(const fs::path& out_dir, const std::vector<std::string>& written_names) {
  static const std::regex shard_pattern("(train|val)_[0-9]{6}\\.bin");
  for (const auto& entry : fs::directory_iterator(out_dir)) {
    const std::string name = entry.path().filename().string();
    if (!std::regex_match(name, shard_pattern)) continue;
    if (std::find(written_names.begin(), written_names.end(), name) != written_names.end()) continue;
    std::error_code error;
    fs::remove(entry.path(), error);
    SY_CHECK_AS(ErrorKind::io, !error) << entry.path().string() << ": cannot remove stale shard: " << error.message();
  }
}

}  // namespace

std::string read_text_file(const std::string& path, const TextReadOptions& options) {
  std::error_code error;
  const bool regular = fs::is_regular_file(path, error);
  SY_CHECK_AS(ErrorKind::data, regular)
      << path << ": cannot read text file: " << (error ? error.message() : std::string("not a regular file"));
  std::ifstream in(path, std::ios::binary);
  SY_CHECK_AS(ErrorKind::data, in.is_open()) << path << ": cannot read text file: " << std::strerror(errno);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  SY_CHECK_AS(ErrorKind::data, !in.bad()) << path << ": cannot read text file: " << std::strerror(errno);
  return options.strip_fortune_separators ? without_fortune_separators(text) : text;
}

std::int64_t PrepareSummary::train_tokens() const {
  std::int64_t total = 0;
  for (const auto& shard : train) total += shard.tokens;
  return total;
}

std::string PrepareSummary::describe() const {
  std::ostringstream out;
  out << "prepared " << text_bytes << " bytes of text from " << input_files << (input_files == 1 ? " file" : " files")
      << ": " << train_tokens() << " train tokens in " << train.size() << (train.size() == 1 ? " shard" : " shards")
      << ", " << val.tokens << " validation tokens\n";
  for (const auto& shard : train) out << "  " << shard.path << "  " << shard.tokens << " tokens\n";
  out << "  " << val.path << "  " << val.tokens << " tokens\n";
  return out.str();
}

PrepareSummary prepare(const PrepareOptions& options) {
  SY_CHECK(options.val_fraction >= 0.0 && options.val_fraction < 1.0)
      << "prepare: val_fraction must be in [0, 1), got " << options.val_fraction;
  SY_CHECK(options.seq_len >= 1) << "prepare: seq_len must be at least 1, got " << options.seq_len;
  SY_CHECK(options.shard_tokens >= 1) << "prepare: shard_tokens must be at least 1, got " << options.shard_tokens;
  SY_CHECK(!options.out_dir.empty()) << "prepare: no output directory given";
  SY_CHECK_AS(ErrorKind::data, !options.inputs.empty()) << "prepare: no input text files given";

  // Byte-level corpora this targets fit in memory; the split needs the total length first.
  const TextReadOptions read_options{options.strip_fortune_separators};
  std::string text;
  for (const auto& path : options.inputs) text += read_text_file(path, read_options);
  SY_CHECK_AS(ErrorKind::data, !text.empty())
      << "prepare: the input text is empty (" << options.inputs.size() << " files"
      << (options.strip_fortune_separators ? ", after removing fortune separator lines)" : ")");

  const auto total = std::int64_t(text.size());
  const std::int64_t sequence_tokens = options.seq_len + 1;
  const std::int64_t val_tokens =
      std::max(std::int64_t(std::llround(double(total) * options.val_fraction)), sequence_tokens);
  SY_CHECK_AS(ErrorKind::data, total - val_tokens >= sequence_tokens)
      << "prepare: " << total << " bytes of text is too little: a training and a validation sequence of "
      << sequence_tokens << " tokens need " << 2 * sequence_tokens << " at least";

  std::error_code error;
  fs::create_directories(options.out_dir, error);
  SY_CHECK_AS(ErrorKind::io, !error) << options.out_dir << ": cannot create directory: " << error.message();

  PrepareSummary summary;
  summary.input_files = std::int64_t(options.inputs.size());
  summary.text_bytes = total;
  const std::string_view all(text);
  const std::int64_t train_total = total - val_tokens;
  std::vector<std::string> written_names;
  for (std::int64_t start = 0, index = 0; start < train_total; start += options.shard_tokens, ++index) {
    const std::int64_t count = std::min(options.shard_tokens, train_total - start);
    const std::string name = shard_name("train", index);
    const std::string path = (fs::path(options.out_dir) / name).string();
    write_split(path, all.substr(std::size_t(start), std::size_t(count)));
    summary.train.push_back({path, count});
    written_names.push_back(name);
  }
  written_names.push_back(shard_name("val", 0));
  summary.val = {(fs::path(options.out_dir) / written_names.back()).string(), val_tokens};
  write_split(summary.val.path, all.substr(std::size_t(train_total)));
  remove_stale_shards(options.out_dir, written_names);
  return summary;
}

std::vector<std::string> find_default_corpus(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code error;
  for (fs::directory_iterator it(dir, error), end; !error && it != end; it.increment(error)) {
    const fs::path& path = it->path();
    // symlink_status: the .u8 entries are links to the plain files and would double the text.
    if (!fs::is_regular_file(it->symlink_status())) continue;
    if (path.extension() == ".dat" || path.extension() == ".u8") continue;
    files.push_back(path.string());
  }
  SY_CHECK_AS(ErrorKind::data, !files.empty())
      << dir << ": no fortune text files found; install them with `apt-get install fortunes`"
      << " (or prepare your own text files)";
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace sy
