/* Tokenizer shim: the C API of data/tok.h over the sentencepiece C++ library (0.1.9x).
 * This is the only C++ file of the project. Every entry point catches every exception, so no
 * C++ exception or type crosses into C; failures become -1/NULL plus one line in err.
 * Loading reads the file bytes once: they give the fingerprint (FNV-1a 64) and are handed to
 * LoadFromSerializedProto, so the hash is of exactly the bytes that were parsed.
 * Deliberately not here: sampling/n-best encodings, vocabulary restriction, adding bos/eos
 * (the callers add them where DESIGN.md §2 says). */
#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

extern "C" {
#include "data/err.h"
#include "data/tok.h"
}

struct tok {
    sentencepiece::SentencePieceProcessor sp;
    uint64_t fingerprint;
    int vocab, bos, eos;
};


/* FNV-1a 64 over a byte string. */
static uint64_t fnv1a64(const std::string &s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned char c : s) {
        h ^= c;
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Reads the whole file; false with err set. */
static bool read_file(const char *path, std::string *out, char *err, size_t errlen) {
    FILE *f = std::fopen(path, "rb");
    if (!f) {
        data_set_err(err, errlen, "%s: cannot open: %s", path, std::strerror(errno));
        return false;
    }
    char buf[1 << 16];
    size_t k;
    while ((k = std::fread(buf, 1, sizeof buf, f)) > 0) out->append(buf, k);
    bool bad = std::ferror(f) != 0;
    std::fclose(f);
    if (bad) {
        data_set_err(err, errlen, "%s: read error", path);
        return false;
    }
    return true;
}

/* The library's status text without its source-location noise. */
static std::string status_reason(const sentencepiece::util::Status &st) {
    std::string m = st.message();
    if (m.find("ParseFromArray") != std::string::npos) return "the bytes do not parse as a ModelProto";
    if (m.size() > 160) m = m.substr(0, 160) + "...";
    return m;
}

extern "C" tok *tok_load(const char *path, char *err, size_t errlen) {
    try {
        std::string bytes;
        if (!read_file(path, &bytes, err, errlen)) return nullptr;
        if (bytes.empty()) {
            data_set_err(err, errlen, "%s: not a SentencePiece model (empty file): expected a .model file",
                    path);
            return nullptr;
        }
        tok *t = new tok();
        sentencepiece::util::Status st = t->sp.LoadFromSerializedProto(bytes);
        if (!st.ok()) {
            data_set_err(err, errlen, "%s: not a SentencePiece model (%s): expected a .model file", path,
                    status_reason(st).c_str());
            delete t;
            return nullptr;
        }
        t->fingerprint = fnv1a64(bytes);
        t->vocab = t->sp.GetPieceSize();
        t->bos = t->sp.bos_id();
        t->eos = t->sp.eos_id();
        return t;
    } catch (const std::exception &e) {
        data_set_err(err, errlen, "%s: not a SentencePiece model (%s)", path, e.what());
    } catch (...) {
        data_set_err(err, errlen, "%s: not a SentencePiece model (unknown C++ exception)", path);
    }
    return nullptr;
}

extern "C" void tok_free(tok *t) {
    try {
        delete t;
    } catch (...) {
    }
}

extern "C" int tok_vocab_size(const tok *t) { return t->vocab; }
extern "C" int tok_bos(const tok *t) { return t->bos; }
extern "C" int tok_eos(const tok *t) { return t->eos; }
extern "C" uint64_t tok_fingerprint(const tok *t) { return t->fingerprint; }

/* Thread-safe: Encode is const on a loaded processor; dataset_build calls this from OpenMP. */
extern "C" int tok_encode(const tok *t, const char *text, int **ids, int *n, char *err,
                          size_t errlen) {
    *ids = nullptr;
    *n = 0;
    try {
        std::vector<int> v;
        sentencepiece::util::Status st = t->sp.Encode(text, &v);
        if (!st.ok()) {
            data_set_err(err, errlen, "tokenizer: encode failed: %s", status_reason(st).c_str());
            return -1;
        }
        int *out = static_cast<int *>(std::malloc((v.size() ? v.size() : 1) * sizeof(int)));
        if (!out) {
            data_set_err(err, errlen, "tokenizer: out of memory for %zu ids", v.size());
            return -1;
        }
        if (!v.empty()) std::memcpy(out, v.data(), v.size() * sizeof(int));
        *ids = out;
        *n = static_cast<int>(v.size());
        return 0;
    } catch (const std::exception &e) {
        data_set_err(err, errlen, "tokenizer: encode failed: %s", e.what());
    } catch (...) {
        data_set_err(err, errlen, "tokenizer: encode failed (unknown C++ exception)");
    }
    return -1;
}

extern "C" char *tok_decode(const tok *t, const int *ids, int n) {
    try {
        std::vector<int> v(ids, ids + (n > 0 ? n : 0));
        for (int id : v)
            if (id < 0 || id >= t->vocab) return nullptr;
        std::string s;
        if (!t->sp.Decode(v, &s).ok()) return nullptr;
        char *out = static_cast<char *>(std::malloc(s.size() + 1));
        if (!out) return nullptr;
        std::memcpy(out, s.data(), s.size());
        out[s.size()] = '\0';
        return out;
    } catch (...) {
    }
    return nullptr;
}

/* Options chosen for a small deterministic corpus and LLaMA-like behaviour: identity
 * normalisation and no whitespace folding (so "\n" survives, as byte-fallback pieces), one
 * thread, no sentence sampling or shuffling, and a soft vocabulary limit (a tiny corpus may not
 * yield vocab_size pieces). minloglevel=2 keeps the trainer's INFO/WARNING logs off stderr. */
extern "C" int tok_train(const char *text_path, const char *model_prefix, int vocab_size,
                         const char *model_type, char *err, size_t errlen) {
    try {
        std::string type = model_type && *model_type ? model_type : "bpe";
        if (type != "bpe" && type != "unigram") {
            data_set_err(err, errlen, "tok_train: model type \"%s\": expected \"bpe\" or \"unigram\"",
                    type.c_str());
            return -1;
        }
        if (vocab_size < 8) {
            data_set_err(err, errlen, "tok_train: vocab_size %d: expected at least 8", vocab_size);
            return -1;
        }
        std::unordered_map<std::string, std::string> kw = {
            {"input", text_path},
            {"model_prefix", model_prefix},
            {"vocab_size", std::to_string(vocab_size)},
            {"model_type", type},
            {"unk_id", "0"},
            {"bos_id", "1"},
            {"eos_id", "2"},
            {"pad_id", "-1"},
            {"byte_fallback", "true"},
            {"character_coverage", "1.0"},
            {"normalization_rule_name", "identity"},
            {"remove_extra_whitespaces", "false"},
            {"split_digits", "true"},
            {"allow_whitespace_only_pieces", "true"},
            {"num_threads", "1"},
            {"input_sentence_size", "0"},
            {"shuffle_input_sentence", "false"},
            {"hard_vocab_limit", "false"},
            {"minloglevel", "2"},
        };
        sentencepiece::util::Status st = sentencepiece::SentencePieceTrainer::Train(kw);
        if (!st.ok()) {
            data_set_err(err, errlen, "%s: sentencepiece training failed: %s", text_path,
                    status_reason(st).c_str());
            return -1;
        }
        return 0;
    } catch (const std::exception &e) {
        data_set_err(err, errlen, "%s: sentencepiece training failed: %s", text_path, e.what());
    } catch (...) {
        data_set_err(err, errlen, "%s: sentencepiece training failed (unknown C++ exception)", text_path);
    }
    return -1;
}
