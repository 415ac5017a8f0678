// Backend and client of the sidecar comparison, in C so that the numbers measure the path between
// them (kernel or proxies), not an event loop. bench/sidecar-compare.ts builds and runs it.
//   sidecar-peer server HOST PORT                prints "ready", serves until killed
//   sidecar-peer connect HOST[,HOST...] PORT COUNT
//                                                prints "conn_per_s p50_us p99_us failures"; several
//                                                hosts are taken in turn (client-side round-robin)
//   sidecar-peer pingpong HOST PORT SIZE COUNT   prints "p50_us p99_us" of COUNT round trips
//   sidecar-peer bulk HOST PORT BYTES CHUNK      prints "gbit_per_s" of BYTES sent one way
// Wire protocol: the first byte picks the mode. 'e': every later byte is echoed back; 'b': bytes are
// drained until EOF, then one byte 'k' answers. Proxies in TCP mode pass both through unchanged.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 65536

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static int full_write(int fd, const char *buf, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, buf, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		buf += w;
		n -= (size_t)w;
	}
	return 0;
}

/* 1 when n bytes were read, 0 on EOF before them, -1 on error. */
static int full_read(int fd, char *buf, size_t n)
{
	while (n > 0) {
		ssize_t r = read(fd, buf, n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r == 0 ? 0 : -1;
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

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static void nodelay(int fd)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* -1 on failure, with errno from socket() or connect(). */
static int try_connect(const struct sockaddr_in *a)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0)
		return -1;
	if (connect(fd, (const struct sockaddr *)a, sizeof(*a)) < 0) {
		int saved = errno;

		close(fd);
		errno = saved;
		return -1;
	}
	nodelay(fd);
	return fd;
}

/*
 * One process, one epoll loop, blocking sockets: a readable socket never blocks the single read,
 * and echo writes are small enough (or the client reads them) not to block for long. This keeps
 * the backend cheap and identical for every path being compared.
 */
static void serve(const char *host, const char *port)
{
	static char mode[MAX_FDS];
	static char buf[1 << 18];
	struct sockaddr_in a = addr_of(host, port);
	struct epoll_event ev = { .events = EPOLLIN }, events[256];
	int one = 1, lfd = socket(AF_INET, SOCK_STREAM, 0), ep = epoll_create1(0);

	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, 4096) < 0)
		die("listen");
	ev.data.fd = lfd;
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0)
		die("epoll");
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		int n = epoll_wait(ep, events, 256, -1);

		for (int i = 0; i < n; i++) {
			int fd = events[i].data.fd;
			ssize_t r;
			size_t off = 0;

			if (fd == lfd) {
				int c = accept(lfd, NULL, NULL);

				if (c < 0)
					continue;
				ev.data.fd = c;
				if (c >= MAX_FDS || epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) < 0) {
					close(c);
					continue;
				}
				nodelay(c);
				mode[c] = 0;
				continue;
			}
			r = read(fd, buf, sizeof(buf));
			if (r <= 0) {
				if (r == 0 && mode[fd] == 'b')
					full_write(fd, "k", 1);
				close(fd); /* also leaves the epoll set */
				continue;
			}
			if (!mode[fd]) {
				mode[fd] = buf[0];
				off = 1;
			}
			if (mode[fd] == 'e' && (size_t)r > off && full_write(fd, buf + off, (size_t)r - off) < 0)
				close(fd);
		}
	}
}

/* Short connections one after another: connect, one byte there and back, close. */
static void connects(char *hosts, const char *port, int count)
{
	struct sockaddr_in a[16];
	int n = 0;
	uint64_t *lat = calloc((size_t)count, sizeof(*lat)), start;
	int ok = 0, failed = 0;
	char c;

	for (char *h = strtok(hosts, ","); h && n < 16; h = strtok(NULL, ","))
		a[n++] = addr_of(h, port);
	start = now_ns();
	for (int i = 0; i < count; i++) {
		uint64_t t0 = now_ns();
		int fd = try_connect(&a[i % n]);

		if (fd < 0) {
			if (failed++ == 0)
				perror("connect");
			continue;
		}
		if (full_write(fd, "e!", 2) < 0 || full_read(fd, &c, 1) != 1 || c != '!') {
			if (failed++ == 0)
				fprintf(stderr, "connection %d: no echo\n", i);
			close(fd);
			continue;
		}
		lat[ok++] = now_ns() - t0;
		close(fd);
	}
	double secs = (now_ns() - start) / 1e9;

	if (ok == 0) {
		printf("0 0 0 %d\n", failed);
		return;
	}
	qsort(lat, (size_t)ok, sizeof(*lat), cmp_u64);
	printf("%.0f %.2f %.2f %d\n", ok / secs, lat[ok / 2] / 1e3, lat[((size_t)ok * 99) / 100] / 1e3, failed);
}

static void pingpong(const char *host, const char *port, uint32_t size, int count)
{
	struct sockaddr_in a = addr_of(host, port);
	uint64_t *rtt = calloc((size_t)count, sizeof(*rtt));
	char *buf = calloc(1, size);
	int fd = try_connect(&a);

	if (fd < 0)
		die("connect");
	if (full_write(fd, "e", 1) < 0)
		die("write");
	for (int i = 0; i < count; i++) {
		uint64_t t0 = now_ns();

		if (full_write(fd, buf, size) < 0 || full_read(fd, buf, size) != 1)
			die("echo");
		rtt[i] = now_ns() - t0;
	}
	qsort(rtt, (size_t)count, sizeof(*rtt), cmp_u64);
	printf("%.2f %.2f\n", rtt[count / 2] / 1e3, rtt[((size_t)count * 99) / 100] / 1e3);
	close(fd);
}

static void bulk(const char *host, const char *port, long long total, size_t chunk)
{
	struct sockaddr_in a = addr_of(host, port);
	char *buf = calloc(1, chunk), ack;
	int fd = try_connect(&a);
	uint64_t t0 = now_ns();

	if (fd < 0)
		die("connect");
	if (full_write(fd, "b", 1) < 0)
		die("write");
	for (long long sent = 0; sent < total; sent += (long long)chunk)
		if (full_write(fd, buf, chunk) < 0)
			die("write");
	shutdown(fd, SHUT_WR);
	if (full_read(fd, &ack, 1) != 1)
		die("no ack");
	printf("%.3f\n", (double)total * 8 / ((now_ns() - t0) / 1e9) / 1e9);
	close(fd);
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "server"))
		serve(argv[2], argv[3]);
	else if (argc == 5 && !strcmp(argv[1], "connect"))
		connects(argv[2], argv[3], atoi(argv[4]));
	else if (argc == 6 && !strcmp(argv[1], "pingpong"))
		pingpong(argv[2], argv[3], (uint32_t)atoi(argv[4]), atoi(argv[5]));
	else if (argc == 6 && !strcmp(argv[1], "bulk"))
		bulk(argv[2], argv[3], atoll(argv[4]), (size_t)atol(argv[5]));
	else {
		fprintf(stderr, "usage: see the top of sidecar-peer.c\n");
		return 2;
	}
	return 0;
}
