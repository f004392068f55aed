// Megatron-Core indexed-dataset builder for speech-text documents (see indexed_builder.cpp).
#pragma once

#include <pybind11/pybind11.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
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

// Writes filled buffers to a file on its own thread, so laying out the next buffer overlaps the
// write of the previous one; with two cores the builder runs at about the speed of the write alone.
class BackgroundWriter {
 public:
  BackgroundWriter(const std::string& path, size_t buffer_bytes, int num_buffers);
  ~BackgroundWriter();
  BackgroundWriter(const BackgroundWriter&) = delete;
  BackgroundWriter& operator=(const BackgroundWriter&) = delete;

  std::vector<char>* acquire();                       // an empty buffer (waits for one to be written)
  void submit(std::vector<char>* buffer, size_t used);  // queue its first `used` bytes for writing
  void close();                                       // write everything, close; rethrows a write error

 private:
  void run();
  void rethrow_error();

  std::string path_;
  FILE* file_ = nullptr;
  std::vector<std::vector<char>> buffers_;
  std::deque<std::vector<char>*> free_;
  std::deque<std::pair<std::vector<char>*, size_t>> pending_;
  std::atomic<int> free_count_{0}, pending_count_{0};  // mirrors of the deques' sizes, for spinning
  std::mutex mutex_;
  std::condition_variable changed_;
  bool closing_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

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
  template <typename T>
  void add_segments_as(const SegmentBatch& batch);
  // Appends src[i] + offset for n ids as T, each src[i] checked to lie in [0, limit).
  template <typename T>
  void append(const int32_t* src, int64_t n, int32_t offset, int32_t limit, const char* what);
  template <typename T>
  void push(int32_t id);  // one id already known to be in range (the special tokens)
  [[noreturn]] void report_out_of_range(const int32_t* src, int64_t n, int32_t limit, const char* what) const;
  void flush();
  void end_document(int64_t length);

  std::string bin_path_;
  int dtype_code_;
  int64_t vocab_size_;
  std::unique_ptr<BackgroundWriter> writer_;
  std::vector<char>* buffer_ = nullptr;  // the one being filled, owned by writer_
  size_t used_ = 0;
  std::vector<int32_t> lengths_;
  std::vector<int64_t> document_indices_;
  int64_t num_tokens_ = 0;
};

void bind_indexed_builder(pybind11::module_& m);

}  // namespace megatron_speech
