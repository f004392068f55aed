// Megatron-Core indexed-dataset builder for speech-text documents (see indexed_builder.cpp).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace megatron_speech {

// Flat views of one batch of documents, each a run of segments (kind 0 text, 1 audio).
struct SegmentBatch {
  const int32_t* text_tokens;      // all text segments' LM ids, concatenated
  const int32_t* audio_codes;      // all audio segments' codebook indices, concatenated
  const uint8_t* segment_kinds;    // per segment
  const int64_t* segment_lengths;  // per segment, in its source array
  const int64_t* doc_num_segments; // per document
  int64_t num_documents;
  int64_t audio_offset, codebook_size, boa, eoa;
  int64_t eod;  // appended to each document; -1 for none
};

void write_index(const std::string& idx_path, int dtype_code, const std::vector<int32_t>& lengths,
                 const std::vector<int64_t>& document_indices);

class IndexedBuilder {
 public:
  IndexedBuilder(const std::string& bin_path, int dtype_code, int64_t vocab_size);
  ~IndexedBuilder();
  IndexedBuilder(const IndexedBuilder&) = delete;
  IndexedBuilder& operator=(const IndexedBuilder&) = delete;

  void add_segments(const SegmentBatch& batch);
  void finalize(const std::string& idx_path);
  int64_t num_documents() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t num_tokens() const { return num_tokens_; }

 private:
  void put(int64_t id);
  // Appends src[i] + offset for n ids, each src[i] checked to lie in [lo, hi).
  void put_many(const int32_t* src, int64_t n, int64_t offset, int64_t lo, int64_t hi, const char* what);
  template <typename T>
  bool copy_block(const int32_t* src, int64_t n, int64_t offset, int64_t lo, int64_t hi);
  void flush();
  void end_document(int64_t length);

  std::string bin_path_;
  int dtype_code_;
  int64_t vocab_size_;
  FILE* file_ = nullptr;
  std::vector<char> buffer_;
  size_t used_ = 0;
  std::vector<int32_t> lengths_;
  std::vector<int64_t> document_indices_;
  int64_t num_tokens_ = 0;
};

void bind_indexed_builder(pybind11::module_& m);

}  // namespace megatron_speech
