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
constexpr size_t kBufferBytes = 8 << 20;

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
  buffer_.resize(kBufferBytes);
  file_ = open_or_throw(bin_path, "wb");
}

IndexedBuilder::~IndexedBuilder() {
  if (file_ != nullptr) std::fclose(file_);
}

template <typename T>
bool IndexedBuilder::copy_block(const int32_t* src, int64_t n, int64_t offset, int64_t lo, int64_t hi) {
  T* dst = reinterpret_cast<T*>(buffer_.data() + used_);
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = src[i];
    bad |= (v < lo) | (v >= hi);
    dst[i] = static_cast<T>(v + offset);
  }
  return !bad;
}

void IndexedBuilder::put_many(const int32_t* src, int64_t n, int64_t offset, int64_t lo, int64_t hi,
                              const char* what) {
  const size_t size = itemsize(dtype_code_);
  const int64_t block_tokens = static_cast<int64_t>(kBufferBytes / size);
  for (int64_t done = 0; done < n;) {
    const int64_t block = std::min(block_tokens, n - done);
    if (used_ + block * size > buffer_.size()) flush();
    const bool ok = dtype_code_ == kDtypeUint16
                        ? copy_block<uint16_t>(src + done, block, offset, lo, hi)
                        : copy_block<int32_t>(src + done, block, offset, lo, hi);
    if (!ok) {
      for (int64_t i = done; i < done + block; ++i) {
        if (src[i] < lo || src[i] >= hi) {
          throw std::out_of_range(std::string(what) + " " + std::to_string(src[i]) + " outside [" +
                                  std::to_string(lo) + ", " + std::to_string(hi) + ") in document " +
                                  std::to_string(lengths_.size()));
        }
      }
    }
    used_ += block * size;
    done += block;
  }
}

void IndexedBuilder::put(int64_t id) {
  const int32_t value = static_cast<int32_t>(id);
  if (id != value) throw std::out_of_range("token id " + std::to_string(id) + " does not fit int32");
  put_many(&value, 1, 0, 0, vocab_size_, "token id");
}

void IndexedBuilder::flush() {
  write_or_throw(file_, buffer_.data(), used_, bin_path_);
  used_ = 0;
}

void IndexedBuilder::end_document(int64_t length) {
  if (length > INT32_MAX) throw std::overflow_error("document longer than 2^31 tokens");
  lengths_.push_back(static_cast<int32_t>(length));
  document_indices_.push_back(static_cast<int64_t>(lengths_.size()));
  num_tokens_ += length;
}

void IndexedBuilder::add_segments(const SegmentBatch& batch) {
  if (file_ == nullptr) throw std::logic_error("builder already finalized");
  int64_t text_pos = 0, audio_pos = 0, segment = 0;
  for (int64_t doc = 0; doc < batch.num_documents; ++doc) {
    int64_t length = 0;
    const int64_t end = segment + batch.doc_num_segments[doc];
    for (; segment < end; ++segment) {
      const int64_t n = batch.segment_lengths[segment];
      if (batch.segment_kinds[segment] == 0) {
        put_many(batch.text_tokens + text_pos, n, 0, 0, vocab_size_, "token id");
        text_pos += n;
        length += n;
      } else {
        put(batch.boa);
        put_many(batch.audio_codes + audio_pos, n, batch.audio_offset, 0, batch.codebook_size,
                 "audio code");
        put(batch.eoa);
        audio_pos += n;
        length += n + 2;
      }
    }
    if (batch.eod >= 0) {
      put(batch.eod);
      ++length;
    }
    end_document(length);
  }
}

void IndexedBuilder::finalize(const std::string& idx_path) {
  if (file_ == nullptr) throw std::logic_error("builder already finalized");
  flush();
  const int closed = std::fclose(file_);
  file_ = nullptr;
  if (closed != 0) throw std::runtime_error("closing " + bin_path_ + " failed");
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
