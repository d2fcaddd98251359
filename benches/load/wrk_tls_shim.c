/*
 * LD_PRELOAD shim for wrk (benches/load/run.sh, TLS scenarios).
 *
 * wrk keeps one SSL object per connection and, on reconnect, calls
 * SSL_shutdown + SSL_clear, which keeps the last session (including a TLS 1.3
 * ticket received from the server), so the next SSL_connect offers it and the
 * server resumes: wrk's "new connection per request" measures resumed
 * handshakes, not full ones. This shim
 *   - drops the session in SSL_clear when WRK_NO_RESUME=1, so every
 *     connection does a full handshake (certificate + signature);
 *   - counts completed handshakes, full and resumed, and writes
 *     "full <n> resumed <m>" to the file named by WRK_TLS_STATS at exit.
 * It changes nothing else; it affects both proxies the same way (client side).
 *
 * Build: cc -O2 -shared -fPIC -o wrk_tls_shim.so wrk_tls_shim.c -lssl -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>

static int (*real_clear)(SSL *);
static int (*real_connect)(SSL *);
static unsigned long full, resumed;
static int no_resume = -1;

int SSL_clear(SSL *s) {
    if (!real_clear) real_clear = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
    if (no_resume < 0) {
        const char *v = getenv("WRK_NO_RESUME");
        no_resume = v && v[0] == '1';
    }
    int r = real_clear(s);
    if (no_resume) SSL_set_session(s, NULL);
    return r;
}

int SSL_connect(SSL *s) {
    if (!real_connect) real_connect = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
    /* WRK_SNI: the server name to send instead of the URL's host (wrk only
     * knows the URL, here an IP; a passthrough route is found by SNI). */
    const char *sni = getenv("WRK_SNI");
    if (sni && *sni) SSL_set_tlsext_host_name(s, sni);
    int r = real_connect(s);
    if (r == 1) {
        if (SSL_session_reused(s))
            __atomic_add_fetch(&resumed, 1, __ATOMIC_RELAXED);
        else
            __atomic_add_fetch(&full, 1, __ATOMIC_RELAXED);
    }
    return r;
}

__attribute__((destructor)) static void report(void) {
    const char *path = getenv("WRK_TLS_STATS");
    if (!path) return;
    FILE *f = fopen(path, "w");
    if (!f) return;
    fprintf(f, "full %lu resumed %lu\n", full, resumed);
    fclose(f);
}
