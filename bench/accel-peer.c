// Both ends of the acceleration benchmark, in C so the numbers measure the kernel path, not an
// event loop. bench/accel.ts builds and runs it inside a cgroup with and without the sockmap.
//   accel-peer server HOST PORT                 prints "ready", serves until killed
//   accel-peer pingpong HOST PORT SIZE COUNT    prints "p50_us p99_us" of COUNT round trips
//   accel-peer bulk HOST PORT BYTES CHUNK       prints "gbit_per_s" of BYTES sent one way
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void full_write(int fd, const char *buf, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, buf, n);
		if (w <= 0)
			die("write");
		buf += w;
		n -= (size_t)w;
	}
}

static int full_read(int fd, char *buf, size_t n)
{
	while (n > 0) {
		ssize_t r = read(fd, buf, n);
		if (r == 0)
			return 0;
		if (r < 0)
			die("read");
		buf += r;
		n -= (size_t)r;
	}
	return 1;
}

static struct sockaddr_in addr_of(const char *host, const char *port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port)) };

	if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
		die("inet_pton");
	return a;
}

static int connect_to(const char *host, const char *port)
{
	struct sockaddr_in a = addr_of(host, port);
	int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("connect");
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

/* First byte: 'p' then a 4-byte size: echo messages of that size; 'b': drain to EOF, answer 1 byte. */
static void serve(int fd)
{
	static char buf[1 << 20];
	uint32_t size;
	char mode;
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (!full_read(fd, &mode, 1))
		return;
	if (mode == 'p') {
		if (!full_read(fd, (char *)&size, 4) || size > sizeof(buf))
			return;
		while (full_read(fd, buf, size))
			full_write(fd, buf, size);
	} else {
		while (read(fd, buf, sizeof(buf)) > 0)
			;
		full_write(fd, "k", 1);
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc >= 4 && !strcmp(argv[1], "server")) {
		struct sockaddr_in a = addr_of(argv[2], argv[3]);
		int one = 1, lfd = socket(AF_INET, SOCK_STREAM, 0);

		setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, 64) < 0)
			die("listen");
		signal(SIGCHLD, SIG_IGN);
		printf("ready\n");
		fflush(stdout);
		for (;;) {
			int fd = accept(lfd, NULL, NULL);

			if (fd < 0)
				continue;
			if (fork() == 0) {
				close(lfd);
				serve(fd);
				_exit(0);
			}
			close(fd);
		}
	}
	if (argc >= 6 && !strcmp(argv[1], "pingpong")) {
		uint32_t size = (uint32_t)atoi(argv[4]);
		int count = atoi(argv[5]), fd = connect_to(argv[2], argv[3]);
		uint64_t *rtt = calloc((size_t)count, sizeof(*rtt));
		char *buf = calloc(1, size), hdr[5] = { 'p' };

		memcpy(hdr + 1, &size, 4);
		full_write(fd, hdr, 5);
		for (int i = 0; i < count; i++) {
			uint64_t t0 = now_ns();

			full_write(fd, buf, size);
			if (!full_read(fd, buf, size))
				die("echo closed");
			rtt[i] = now_ns() - t0;
		}
		qsort(rtt, (size_t)count, sizeof(*rtt), cmp_u64);
		printf("%.2f %.2f\n", rtt[count / 2] / 1e3, rtt[(count * 99) / 100] / 1e3);
		return 0;
	}
	if (argc >= 6 && !strcmp(argv[1], "bulk")) {
		long long total = atoll(argv[4]);
		size_t chunk = (size_t)atol(argv[5]);
		char *buf = calloc(1, chunk), ack;
		int fd = connect_to(argv[2], argv[3]);
		uint64_t t0 = now_ns();

		full_write(fd, "b", 1);
		for (long long sent = 0; sent < total; sent += (long long)chunk)
			full_write(fd, buf, chunk);
		shutdown(fd, SHUT_WR);
		if (!full_read(fd, &ack, 1))
			die("no ack");
		printf("%.3f\n", (double)total * 8 / ((now_ns() - t0) / 1e9) / 1e9);
		return 0;
	}
	fprintf(stderr, "usage: see the top of accel-peer.c\n");
	return 2;
}
