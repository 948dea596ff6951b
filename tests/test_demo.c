/* Tests of the demo's own logic (demo/demo_tool.c, included here with its main() compiled out):
 * the invented world and its instruction sets are a pure function of the seed, the train and
 * held-out instructions are about disjoint countries, and every held-out answer is stated in the
 * pre-training corpus; the exact-match scorer; the SVG writer produces well-formed SVG.
 * Deliberately not here: running the demo (training takes minutes; `make demo` is its own check). */
#define DEMO_TOOL_NO_MAIN
#include "demo/demo_tool.c"

#include <unistd.h>

#include "tests/test.h"

/* The whole corpus for a world as one malloc'ed string. */
static char *corpus_text(const demo_world *w, int repeat, int per_doc, int max_gap, uint64_t seed) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    int n = demo_write_corpus(f, w, repeat, per_doc, 1, max_gap, seed);
    fclose(f);
    if (n < 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static char *json_text(const demo_world *w, int from, int to) {
    cJSON *j = demo_instructions(w, from, to);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

static void test_world_is_a_function_of_the_seed(void) {
    demo_world a, b, c;
    CHECK(demo_world_make(&a, 30, 2.0 / 3.0, 7) == 0, "world a");
    CHECK(demo_world_make(&b, 30, 2.0 / 3.0, 7) == 0, "world b");
    CHECK(demo_world_make(&c, 30, 2.0 / 3.0, 8) == 0, "world c");
    CHECK(memcmp(a.e, b.e, sizeof *a.e * 30) == 0, "same seed, different entities");
    CHECK(memcmp(a.e, c.e, sizeof *a.e * 30) != 0, "seeds 7 and 8 give the same world");
    char *ca = corpus_text(&a, 3, 5, 4, 7), *cb = corpus_text(&b, 3, 5, 4, 7), *cc = corpus_text(&a, 3, 5, 4, 8);
    CHECK(ca && cb && cc, "corpus written");
    if (ca && cb && cc) {
        CHECK(!strcmp(ca, cb), "same seed, different corpus");
        CHECK(strcmp(ca, cc) != 0, "the corpus order does not depend on the seed");
        /* 30 entities x 4 facts x 5 sentences x 3 passes, 5 sentences per line */
        int lines = 0;
        for (const char *p = ca; *p; p++) lines += *p == '\n';
        CHECK(lines == 30 * DEMO_N_ATTR * (DEMO_N_TPL + 1) * 3 / 5, "corpus lines %d", lines);
    }
    char *ja = json_text(&a, 0, a.n_train), *jb = json_text(&b, 0, b.n_train);
    CHECK(ja && jb && !strcmp(ja, jb), "same seed, different instructions");
    free(ca);
    free(cb);
    free(cc);
    free(ja);
    free(jb);
    demo_world_free(&a);
    demo_world_free(&b);
    demo_world_free(&c);
}

static void test_world_names_are_unique_and_split_as_asked(void) {
    demo_world w;
    CHECK(demo_world_make(&w, 60, 2.0 / 3.0, 1) == 0, "world");
    CHECK(w.n == 60 && w.n_train == 40, "split %d/%d, want 40 of 60", w.n_train, w.n);
    int dup = 0;
    for (int i = 0; i < w.n; i++)
        for (int j = 0; j < w.n; j++) {
            if (i != j && !strcmp(w.e[i].name, w.e[j].name)) dup++;
            /* invented values (capital, founder) are never another country's or another's value */
            for (int a = 0; a < DEMO_N_ATTR; a++) {
                if (DEMO_ATTRS[a].values) continue;
                if (!strcmp(w.e[i].val[a], w.e[j].name)) dup++;
                for (int b = 0; b < DEMO_N_ATTR; b++)
                    if (!DEMO_ATTRS[b].values && (i != j || a != b) && !strcmp(w.e[i].val[a], w.e[j].val[b])) dup++;
            }
        }
    CHECK(dup == 0, "%d name collisions", dup);
    demo_world_free(&w);
}

static void test_heldout_is_disjoint_and_its_facts_are_in_the_corpus(void) {
    demo_world w;
    CHECK(demo_world_make(&w, 24, 2.0 / 3.0, 3) == 0, "world");
    cJSON *tr = demo_instructions(&w, 0, w.n_train), *ho = demo_instructions(&w, w.n_train, w.n);
    char *corpus = corpus_text(&w, 1, 4, 6, 3);
    CHECK(corpus != NULL, "corpus");
    CHECK(cJSON_GetArraySize(tr) == w.n_train * DEMO_N_ATTR, "train size %d", cJSON_GetArraySize(tr));
    CHECK(cJSON_GetArraySize(ho) == (w.n - w.n_train) * DEMO_N_ATTR, "held-out size %d", cJSON_GetArraySize(ho));
    /* no held-out instruction names a train country, and no instruction text appears in both */
    const cJSON *h, *t;
    int shared = 0, names_train = 0, missing = 0;
    cJSON_ArrayForEach(h, ho) {
        const char *q = cJSON_GetObjectItem(h, "instruction")->valuestring;
        const char *out = cJSON_GetObjectItem(h, "output")->valuestring;
        cJSON_ArrayForEach(t, tr) if (!strcmp(q, cJSON_GetObjectItem(t, "instruction")->valuestring)) shared++;
        for (int i = 0; i < w.n_train; i++) {
            char pat[64];
            snprintf(pat, sizeof pat, " %s?", w.e[i].name);
            if (strstr(q, pat)) names_train++;
        }
        /* the answer is stated in the corpus: the Q/A line of this very question, whose answer
         * marker follows after at most max_gap filler words */
        char qa[512], ans[128];
        snprintf(qa, sizeof qa, "Q: %s", q);
        snprintf(ans, sizeof ans, "A:%s.", out);
        const char *at = corpus ? strstr(corpus, qa) : NULL, *a = at ? strstr(at, " A:") : NULL;
        int words = 0;
        for (const char *c = at ? at + strlen(qa) : NULL; c && c < a; c++) words += *c == ' ';
        if (!at || !a || strncmp(a + 1, ans, strlen(ans)) || words > 6) {
            missing++;
            if (missing == 1) printf("  not in the corpus: %s ... %s\n", qa, ans);
        }
    }
    CHECK(shared == 0, "%d instructions in both splits", shared);
    CHECK(names_train == 0, "%d held-out instructions about train countries", names_train);
    CHECK(missing == 0, "%d held-out answers not stated in the corpus", missing);
    /* and each held-out fact is also stated in every declarative template */
    int stated = 0, want = 0;
    for (int i = w.n_train; i < w.n; i++)
        for (int a = 0; a < DEMO_N_ATTR; a++)
            for (int k = 0; k < DEMO_N_TPL; k++) {
                char s[256];
                demo_fill(s, sizeof s, DEMO_ATTRS[a].tpl[k], w.e[i].name, w.e[i].val[a]);
                want++;
                stated += corpus && strstr(corpus, s) != NULL;
            }
    CHECK(stated == want, "%d of %d held-out statements in the corpus", stated, want);
    free(corpus);
    cJSON_Delete(tr);
    cJSON_Delete(ho);
    demo_world_free(&w);
}

static void test_fill_substitutes_entity_and_value(void) {
    char s[64];
    demo_fill(s, sizeof s, "{V} is the capital of {E}.", "Velmora", "Dastrin");
    CHECK(!strcmp(s, "Dastrin is the capital of Velmora."), "got '%s'", s);
    demo_qa_line(s, sizeof s, 0, 0, "Velmora", "Dastrin", "");
    CHECK(!strcmp(s, "Q: What is the capital of Velmora? A: Dastrin."), "got '%s'", s);
    demo_fill(s, 12, "{E}{E}{E}", "abcdef", "");
    CHECK(!strcmp(s, "abcdefabcde"), "truncation: got '%s'", s);
}

static void test_exact_match_normalises_only_space_case_and_final_period(void) {
    CHECK(demo_exact_match("Dastrin", " Dastrin"), "leading space of the reference");
    CHECK(demo_exact_match("  dastrin. ", " Dastrin"), "case, one final period, spaces");
    CHECK(demo_exact_match("Dastrin\n", "Dastrin"), "trailing newline");
    CHECK(!demo_exact_match("Dastrin is the capital", " Dastrin"), "extra words must not match");
    CHECK(!demo_exact_match("The capital is Dastrin", " Dastrin"), "answer inside a sentence must not match");
    CHECK(!demo_exact_match("Dastri", " Dastrin"), "prefix must not match");
    CHECK(!demo_exact_match("Dastrinn", " Dastrin"), "longer word must not match");
    CHECK(!demo_exact_match("Dastrin..", " Dastrin"), "only one period is dropped");
    CHECK(!demo_exact_match("", " "), "empty reference matches nothing");
    CHECK(!demo_exact_match("", "Dastrin"), "empty answer");
    CHECK(demo_answer_first("Dastrin. The flag of Velmora is red.", " Dastrin"), "answer then more text");
    CHECK(demo_answer_first(" dastrin", " Dastrin"), "the answer alone");
    CHECK(!demo_answer_first("Dastrinia is big", " Dastrin"), "a longer word is not the answer");
    CHECK(!demo_answer_first("The capital is Dastrin", " Dastrin"), "the answer later in the reply");
    CHECK(!demo_answer_first("anything", " "), "empty reference");
    char n[16];
    demo_normalize("  Red.  ", n, sizeof n);
    CHECK(!strcmp(n, "red"), "normalize: got '%s'", n);
}

/* A minimal XML well-formedness check: every tag closed in order, attributes quoted, text
 * without raw '<' or '&' outside entities. Returns the number of elements named `count_name`,
 * or -1 when not well-formed (with the reason in why). */
static int xml_check(const char *s, const char *count_name, char *why, size_t n) {
    char stack[64][32];
    int depth = 0, count = 0, roots = 0;
    const char *p = s;
    if (!strncmp(p, "<?xml", 5)) {
        p = strstr(p, "?>");
        if (!p) return snprintf(why, n, "unterminated declaration"), -1;
        p += 2;
    }
    while (*p) {
        if (*p == '&') {
            const char *e = strchr(p, ';');
            if (!e || e - p > 6) return snprintf(why, n, "bare '&' at %ld", (long)(p - s)), -1;
            p = e + 1;
            continue;
        }
        if (*p != '<') {
            if (depth == 0 && !isspace((unsigned char)*p)) return snprintf(why, n, "text outside the root"), -1;
            p++;
            continue;
        }
        int closing = p[1] == '/';
        const char *q = p + 1 + closing;
        char name[32];
        int k = 0;
        while (*q && (isalnum((unsigned char)*q) || *q == '-' || *q == ':') && k < 31) name[k++] = *q++;
        name[k] = 0;
        if (!k) return snprintf(why, n, "bad tag at %ld", (long)(p - s)), -1;
        /* attributes: name="value" */
        while (*q && *q != '>' && !(*q == '/' && q[1] == '>')) {
            if (isspace((unsigned char)*q)) {
                q++;
                continue;
            }
            while (*q && *q != '=' && *q != '>' && !isspace((unsigned char)*q)) q++;
            if (*q != '=' || q[1] != '"') return snprintf(why, n, "unquoted attribute in <%s>", name), -1;
            const char *e = strchr(q + 2, '"');
            if (!e) return snprintf(why, n, "unterminated attribute in <%s>", name), -1;
            for (const char *c = q + 2; c < e; c++)
                if (*c == '<') return snprintf(why, n, "'<' inside an attribute of <%s>", name), -1;
            q = e + 1;
        }
        if (!*q) return snprintf(why, n, "unterminated tag <%s>", name), -1;
        int self = *q == '/';
        p = q + (self ? 2 : 1);
        if (closing) {
            if (depth == 0 || strcmp(stack[depth - 1], name))
                return snprintf(why, n, "</%s> closes <%s>", name, depth ? stack[depth - 1] : "nothing"), -1;
            depth--;
            continue;
        }
        if (depth == 0) roots++;
        if (!strcmp(name, count_name)) count++;
        if (!self) {
            if (depth == 64) return snprintf(why, n, "too deep"), -1;
            snprintf(stack[depth++], 32, "%s", name);
        }
    }
    if (depth) return snprintf(why, n, "<%s> never closed", stack[depth - 1]), -1;
    if (roots != 1) return snprintf(why, n, "%d root elements", roots), -1;
    return count;
}

static void test_svg_is_well_formed_with_one_polyline_per_series(void) {
    double x1[50], y1[50], x2[10], y2[10], x3[10], y3[10];
    for (int i = 0; i < 50; i++) x1[i] = i + 1, y1[i] = 6.5 * exp(-i / 10.0);
    for (int i = 0; i < 10; i++) x2[i] = x3[i] = i + 1, y2[i] = 3 - 0.2 * i, y3[i] = 3 - 0.25 * i;
    y3[4] = NAN; /* a missing value is skipped, not printed as "nan" */
    demo_series pre[1] = {{"pre-training <full> & more", x1, y1, 50}};
    demo_series ft[2] = {{"adapter", x2, y2, 10}, {"full fine-tune", x3, y3, 10}};
    demo_panel panels[2] = {{"Pre-training", pre, 1}, {"Instruction tuning", ft, 2}};
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    CHECK(f && demo_svg_write(f, panels, 2) == 0, "write");
    fclose(f);
    char why[256] = "";
    int polylines = xml_check(buf, "polyline", why, sizeof why);
    CHECK(polylines == 3, "polylines %d (%s)", polylines, why);
    CHECK(strstr(buf, "<svg xmlns=\"http://www.w3.org/2000/svg\"") != NULL, "svg root with namespace");
    CHECK(strstr(buf, "&lt;full&gt; &amp; more") != NULL, "label escaped");
    CHECK(strstr(buf, "nan") == NULL && strstr(buf, "inf") == NULL, "no nan/inf in coordinates");
    /* the first point of the first series: x at the left axis + 1/50 of the width, y of 6.5 on a
     * 0..7 axis; every coordinate inside the drawing */
    const char *pts = strstr(buf, "points=\"");
    int inside = pts != NULL, npts = 0;
    if (pts) {
        pts += 8;
        while (*pts && *pts != '"') {
            double x, y;
            int used = 0;
            if (sscanf(pts, "%lf,%lf%n", &x, &y, &used) != 2) break;
            npts++;
            if (x < 0 || x > 880 || y < 0 || y > 320) inside = 0;
            pts += used;
            while (*pts == ' ') pts++;
        }
    }
    CHECK(npts == 50, "first polyline has %d points, want 50", npts);
    CHECK(inside, "points outside the picture");
    /* the broken-document check itself can fail */
    CHECK(xml_check("<svg><g></svg></g>", "g", why, sizeof why) < 0, "crossed tags accepted");
    CHECK(xml_check("<svg a=1></svg>", "g", why, sizeof why) < 0, "unquoted attribute accepted");
    free(buf);
}

static void test_metrics_reader_takes_step_and_loss(void) {
    char dir[] = "/tmp/test_demo_XXXXXX", path[64], err[256];
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"step\":1,\"epoch\":0,\"lr\":0,\"loss\":2.5,\"tokens\":3}\n{\"step\":2,\"loss\":1.25}\n");
    fclose(f);
    double *x, *y;
    int n;
    CHECK(demo_read_metrics(path, &x, &y, &n, err, sizeof err) == 0, "%s", err);
    CHECK(n == 2 && x[0] == 1 && y[0] == 2.5 && x[1] == 2 && y[1] == 1.25, "read %d lines", n);
    free(x);
    free(y);
    CHECK(demo_metrics_loss(path, 2) == 1.25, "loss of step 2");
    CHECK(isnan(demo_metrics_loss(path, 3)), "missing step is NaN");
    f = fopen(path, "a");
    fprintf(f, "{\"step\":3}\n");
    fclose(f);
    CHECK(demo_read_metrics(path, &x, &y, &n, err, sizeof err) == -1, "a line without loss is refused");
    CHECK(strstr(err, "line 3") != NULL, "error names the line: %s", err);
    remove(path);
    rmdir(dir);
}

int main(void) {
    RUN(test_world_is_a_function_of_the_seed);
    RUN(test_world_names_are_unique_and_split_as_asked);
    RUN(test_heldout_is_disjoint_and_its_facts_are_in_the_corpus);
    RUN(test_fill_substitutes_entity_and_value);
    RUN(test_exact_match_normalises_only_space_case_and_final_period);
    RUN(test_svg_is_well_formed_with_one_polyline_per_series);
    RUN(test_metrics_reader_takes_step_and_loss);
    return TEST_MAIN_END("test_demo");
}
