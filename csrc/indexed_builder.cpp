// Lays out speech-text documents and writes Megatron-Core indexed binaries (.bin/.idx).
//
// A document is an ordered list of segments plus an end-of-document id:
//   text segment  -> its token ids, unchanged
//   audio segment -> <|begin_of_audio|>, audio_offset + code for each code, <|end_of_audio|>
// Every layout (text, speech-only, ASR, TTS, interleaved) is such a list, so this one routine
// serves them all. Python tokenizes text (in Rust, batched) and validates records; this file does
// the per-token work: layout, dtype narrowing with range checks, buffered sequential writes.
//
// The .idx layout is Megatron-Core's (_IndexWriter): header "MMIDIDX\0\0", u64 version 1,
// u8 dtype code, u64 sequence count, u64 document count, i32 sequence lengths, i64 byte pointers,
// i64 document indices. One document is one sequence.
#include "indexed_builder.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace megatron_speech {
namespace {

constexpr char kIndexHeader[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr int kDtypeInt32 = 4;
constexpr int kDtypeUint16 = 8;
constexpr size_t kBufferBytes = 512 << 10;  // small enough to stay in cache between the two threads
constexpr int kNumBuffers = 4;  // filled ahead of the writer, so neither waits on the other's jitter

size_t itemsize(int dtype_code) {
  if (dtype_code == kDtypeUint16) return 2;
  if (dtype_code == kDtypeInt32) return 4;
  throw std::invalid_argument("dtype code must be 8 (uint16) or 4 (int32), got " +
                              std::to_string(dtype_code));
}

FILE* open_or_throw(const std::string& path, const char* mode) {
  FILE* file = std::fopen(path.c_str(), mode);
  if (file == nullptr) {
    throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
  }
  return file;
}

void write_or_throw(FILE* file, const void* data, size_t bytes, const std::string& path) {
  if (bytes != 0 && std::fwrite(data, 1, bytes, file) != bytes) {
    throw std::runtime_error("write to " + path + " failed: " + std::strerror(errno));
  }
}

}  // namespace

BackgroundWriter::BackgroundWriter(const std::string& path, size_t buffer_bytes, int num_buffers)
    : path_(path), buffers_(num_buffers, std::vector<char>(buffer_bytes)) {
  file_ = open_or_throw(path, "wb");
  std::setvbuf(file_, nullptr, _IONBF, 0);  // buffers are already large; no second copy
  for (auto& buffer : buffers_) free_.push_back(&buffer);
  free_count_ = num_buffers;
  thread_ = std::thread(&BackgroundWriter::run, this);
}

BackgroundWriter::~BackgroundWriter() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (file_ != nullptr) std::fclose(file_);
}

// A hand-off between the two threads happens every buffer (hundreds a second); sleeping on the
// condition variable at each costs a futex wake-up, so first spin briefly for the other side.
template <typename Ready>
void spin_until(Ready ready) {
  for (int i = 0; i < 20000 && !ready(); ++i) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

void BackgroundWriter::run() {
  for (;;) {
    std::pair<std::vector<char>*, size_t> job;
    spin_until([this] { return pending_count_.load(std::memory_order_acquire) > 0; });
    {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [this] { return !pending_.empty() || closing_; });
      if (pending_.empty()) return;  // closing, nothing left
      job = pending_.front();
      pending_.pop_front();
      pending_count_.fetch_sub(1, std::memory_order_relaxed);
    }
    std::exception_ptr error;
    try {
      write_or_throw(file_, job.first->data(), job.second, path_);
    } catch (...) {
      error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (error && !error_) error_ = error;
      free_.push_back(job.first);
      free_count_.fetch_add(1, std::memory_order_release);
    }
    changed_.notify_all();
  }
}

void BackgroundWriter::rethrow_error() {
  if (error_) std::rethrow_exception(error_);
}

std::vector<char>* BackgroundWriter::acquire() {
  spin_until([this] { return free_count_.load(std::memory_order_acquire) > 0; });
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [this] { return !free_.empty() || error_; });
  rethrow_error();
  std::vector<char>* buffer = free_.front();
  free_.pop_front();
  free_count_.fetch_sub(1, std::memory_order_relaxed);
  return buffer;
}

void BackgroundWriter::submit(std::vector<char>* buffer, size_t used) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    rethrow_error();
    pending_.emplace_back(buffer, used);
    pending_count_.fetch_add(1, std::memory_order_release);
  }
  changed_.notify_all();
}

void BackgroundWriter::close() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
  }
  changed_.notify_all();
  thread_.join();
  const int closed = std::fclose(file_);
  file_ = nullptr;
  rethrow_error();
  if (closed != 0) throw std::runtime_error("closing " + path_ + " failed: " + std::strerror(errno));
}

void write_index(const std::string& idx_path, int dtype_code, const std::vector<int32_t>& lengths,
                 const std::vector<int64_t>& document_indices) {
  const int64_t size = static_cast<int64_t>(itemsize(dtype_code));
  std::vector<int64_t> pointers(lengths.size());
  int64_t pointer = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    pointers[i] = pointer;
    pointer += static_cast<int64_t>(lengths[i]) * size;
  }
  FILE* file = open_or_throw(idx_path, "wb");
  try {
    const uint64_t version = 1, sequences = lengths.size(), documents = document_indices.size();
    const uint8_t code = static_cast<uint8_t>(dtype_code);
    write_or_throw(file, kIndexHeader, sizeof(kIndexHeader), idx_path);
    write_or_throw(file, &version, sizeof(version), idx_path);
    write_or_throw(file, &code, sizeof(code), idx_path);
    write_or_throw(file, &sequences, sizeof(sequences), idx_path);
    write_or_throw(file, &documents, sizeof(documents), idx_path);
    write_or_throw(file, lengths.data(), lengths.size() * sizeof(int32_t), idx_path);
    write_or_throw(file, pointers.data(), pointers.size() * sizeof(int64_t), idx_path);
    write_or_throw(file, document_indices.data(), documents * sizeof(int64_t), idx_path);
  } catch (...) {
    std::fclose(file);
    throw;
  }
  if (std::fclose(file) != 0) throw std::runtime_error("closing " + idx_path + " failed");
}

IndexedBuilder::IndexedBuilder(const std::string& bin_path, int dtype_code, int64_t vocab_size)
    : bin_path_(bin_path), dtype_code_(dtype_code),
      vocab_size_(vocab_size), document_indices_{0} {
  if (dtype_code == kDtypeUint16 && vocab_size > 65536) {
    throw std::invalid_argument("a vocabulary of " + std::to_string(vocab_size) +
                                " ids does not fit uint16");
  }
  itemsize(dtype_code);  // throws on a dtype other than uint16/int32
  if (vocab_size > INT32_MAX) throw std::invalid_argument("vocabulary exceeds int32");
  writer_ = std::make_unique<BackgroundWriter>(bin_path, kBufferBytes, kNumBuffers);
  buffer_ = writer_->acquire();
}

IndexedBuilder::~IndexedBuilder() = default;

template <typename T>
void IndexedBuilder::append(const int32_t* src, int64_t n, int32_t offset, int32_t limit, const char* what) {
  while (n > 0) {
    const int64_t room = static_cast<int64_t>((buffer_->size() - used_) / sizeof(T));
    if (room == 0) {
      flush();
      continue;
    }
    const int64_t k = std::min(n, room);
    T* dst = reinterpret_cast<T*>(buffer_->data() + used_);
    // One unsigned compare checks 0 <= v < limit; branch-free, so the loop vectorizes.
    uint32_t bad = 0;
    for (int64_t i = 0; i < k; ++i) {
      const int32_t v = src[i];
      bad |= static_cast<uint32_t>(static_cast<uint32_t>(v) >= static_cast<uint32_t>(limit));
      dst[i] = static_cast<T>(v + offset);
    }
    if (bad) report_out_of_range(src, k, limit, what);
    used_ += static_cast<size_t>(k) * sizeof(T);
    src += k;
    n -= k;
  }
}

template <typename T>
inline void IndexedBuilder::push(int32_t id) {
  if (used_ + sizeof(T) > buffer_->size()) flush();
  *reinterpret_cast<T*>(buffer_->data() + used_) = static_cast<T>(id);
  used_ += sizeof(T);
}

void IndexedBuilder::report_out_of_range(const int32_t* src, int64_t n, int32_t limit, const char* what) const {
  for (int64_t i = 0; i < n; ++i) {
    if (src[i] < 0 || src[i] >= limit) {
      throw std::out_of_range(std::string(what) + " " + std::to_string(src[i]) + " outside [0, " +
                              std::to_string(limit) + ") in document " + std::to_string(lengths_.size()));
    }
  }
  throw std::logic_error("range check flagged a block with no id out of range");
}

void IndexedBuilder::flush() {
  writer_->submit(buffer_, used_);
  buffer_ = writer_->acquire();
  used_ = 0;
}

void IndexedBuilder::end_document(int64_t length) {
  if (length > INT32_MAX) throw std::overflow_error("document longer than 2^31 tokens");
  lengths_.push_back(static_cast<int32_t>(length));
  document_indices_.push_back(static_cast<int64_t>(lengths_.size()));
  num_tokens_ += length;
}

void IndexedBuilder::add_segments(const SegmentBatch& batch) {
  if (!writer_) throw std::logic_error("builder already finalized");
  for (int64_t id : {batch.boa, batch.eoa, batch.eod}) {
    if (id != -1 && (id < 0 || id >= vocab_size_)) {
      throw std::out_of_range("special token id " + std::to_string(id) + " outside the vocabulary");
    }
  }
  if (batch.audio_offset < 0 || batch.codebook_size < 0 ||
      batch.audio_offset + batch.codebook_size > vocab_size_) {
    throw std::out_of_range("audio ids [" + std::to_string(batch.audio_offset) + ", +" +
                            std::to_string(batch.codebook_size) + ") exceed the vocabulary");
  }
  if (dtype_code_ == kDtypeUint16) {
    add_segments_as<uint16_t>(batch);
  } else {
    add_segments_as<int32_t>(batch);
  }
}

template <typename T>
void IndexedBuilder::add_segments_as(const SegmentBatch& batch) {
  const auto vocab = static_cast<int32_t>(vocab_size_), codebook = static_cast<int32_t>(batch.codebook_size);
  const auto offset = static_cast<int32_t>(batch.audio_offset);
  const int32_t boa = static_cast<int32_t>(batch.boa), eoa = static_cast<int32_t>(batch.eoa),
                eod = static_cast<int32_t>(batch.eod);
  int64_t text_pos = 0, audio_pos = 0, segment = 0;
  for (int64_t doc = 0; doc < batch.num_documents; ++doc) {
    int64_t length = 0;
    const int64_t end = segment + batch.doc_num_segments[doc];
    for (; segment < end; ++segment) {
      const int64_t n = batch.segment_lengths[segment];
      if (batch.segment_kinds[segment] == 0) {
        append<T>(batch.text_tokens + text_pos, n, 0, vocab, "token id");
        text_pos += n;
        length += n;
      } else {
        push<T>(boa);
        append<T>(batch.audio_codes + audio_pos, n, offset, codebook, "audio code");
        push<T>(eoa);
        audio_pos += n;
        length += n + 2;
      }
    }
    if (batch.eod >= 0) {
      push<T>(eod);
      ++length;
    }
    end_document(length);
  }
}

void IndexedBuilder::finalize(const std::string& idx_path) {
  if (!writer_) throw std::logic_error("builder already finalized");
  writer_->submit(buffer_, used_);
  buffer_ = nullptr;
  writer_->close();
  writer_.reset();
  write_index(idx_path, dtype_code_, lengths_, document_indices_);
}

namespace {

template <typename T>
py::array_t<T, py::array::c_style | py::array::forcecast> as_array(const py::object& o) {
  return py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(o);
}

void check_batch(const SegmentBatch& b, int64_t text_size, int64_t audio_size, int64_t kinds_size,
                 int64_t lengths_size) {
  if (kinds_size != lengths_size) throw std::invalid_argument("segment kinds and lengths differ in size");
  int64_t segments = 0, text = 0, audio = 0;
  for (int64_t d = 0; d < b.num_documents; ++d) {
    if (b.doc_num_segments[d] < 0) throw std::invalid_argument("negative segment count");
    segments += b.doc_num_segments[d];
  }
  if (segments != kinds_size) throw std::invalid_argument("document segment counts do not add up");
  for (int64_t s = 0; s < kinds_size; ++s) {
    if (b.segment_lengths[s] < 0) throw std::invalid_argument("negative segment length");
    (b.segment_kinds[s] == 0 ? text : audio) += b.segment_lengths[s];
  }
  if (text != text_size || audio != audio_size) {
    throw std::invalid_argument("segment lengths do not match the token and code arrays");
  }
}

}  // namespace

void bind_indexed_builder(py::module_& m) {
  py::class_<IndexedBuilder>(m, "IndexedBuilder",
                             "Writes laid-out documents to a Megatron .bin; finalize() writes the .idx.")
      .def(py::init<const std::string&, int, int64_t>(), py::arg("bin_path"), py::arg("dtype_code"),
           py::arg("vocab_size"))
      .def(
          "add_segments",
          [](IndexedBuilder& self, const py::object& text_tokens, const py::object& audio_codes,
             const py::object& segment_kinds, const py::object& segment_lengths,
             const py::object& doc_num_segments, int64_t audio_offset, int64_t codebook_size,
             int64_t boa, int64_t eoa, int64_t eod) {
            auto text = as_array<int32_t>(text_tokens);
            auto audio = as_array<int32_t>(audio_codes);
            auto kinds = as_array<uint8_t>(segment_kinds);
            auto lengths = as_array<int64_t>(segment_lengths);
            auto docs = as_array<int64_t>(doc_num_segments);
            SegmentBatch batch{text.data(),  audio.data(),  kinds.data(), lengths.data(),
                               docs.data(),  docs.size(),   audio_offset, codebook_size,
                               boa,          eoa,           eod};
            check_batch(batch, text.size(), audio.size(), kinds.size(), lengths.size());
            py::gil_scoped_release release;
            self.add_segments(batch);
          },
          py::arg("text_tokens"), py::arg("audio_codes"), py::arg("segment_kinds"),
          py::arg("segment_lengths"), py::arg("doc_num_segments"), py::arg("audio_offset"),
          py::arg("codebook_size"), py::arg("boa"), py::arg("eoa"), py::arg("eod"),
          "Append documents given as segments (kind 0 text, 1 audio) over flat token/code arrays.")
      .def("finalize", &IndexedBuilder::finalize, py::arg("idx_path"),
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("num_documents", &IndexedBuilder::num_documents)
      .def_property_readonly("num_tokens", &IndexedBuilder::num_tokens);

  m.def(
      "write_index",
      [](const std::string& idx_path, int dtype_code, const py::object& lengths,
         const py::object& document_indices) {
        auto l = as_array<int32_t>(lengths);
        auto d = as_array<int64_t>(document_indices);
        std::vector<int32_t> lv(l.data(), l.data() + l.size());
        std::vector<int64_t> dv(d.data(), d.data() + d.size());
        py::gil_scoped_release release;
        write_index(idx_path, dtype_code, lv, dv);
      },
      py::arg("idx_path"), py::arg("dtype_code"), py::arg("sequence_lengths"),
      py::arg("document_indices"), "Write a Megatron .idx file (used when merging shards).");
}

}  // namespace megatron_speech
