/* Freestanding helpers for the test guests: strings, formatting, the COM1 console and the
 * command line. Callable from ring 0 and ring 3. */
#include "rt.h"

#define COM1 0x3f8
#define DEBUG_EXIT_PORT 0xf4

void* memset(void* dst, int c, size_t n) {
  uint8_t* d = dst;
  for (size_t i = 0; i < n; ++i) d[i] = (uint8_t)c;
  return dst;
}

void* memcpy(void* dst, const void* src, size_t n) {
  uint8_t* d = dst;
  const uint8_t* s = src;
  for (size_t i = 0; i < n; ++i) d[i] = s[i];
  return dst;
}

int memcmp(const void* a, const void* b, size_t n) {
  const uint8_t *x = a, *y = b;
  for (size_t i = 0; i < n; ++i)
    if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
  return 0;
}

size_t strlen(const char* s) {
  size_t n = 0;
  while (s[n]) ++n;
  return n;
}

int strncmp(const char* a, const char* b, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return (uint8_t)a[i] < (uint8_t)b[i] ? -1 : 1;
    if (!a[i]) return 0;
  }
  return 0;
}

/* ---- formatting: %d %i %u %x %p %s %c %%, with l/ll, '#', '0' and width ---- */
struct out {
  char* buf;
  size_t size, len;
};

static void put(struct out* o, char c) {
  if (o->len + 1 < o->size) o->buf[o->len] = c;
  o->len++;
}

static void put_number(struct out* o, uint64_t v, unsigned base, int negative, int width, int zero,
                       int alt) {
  char digits[24];
  int n = 0;
  do {
    digits[n++] = "0123456789abcdef"[v % base];
    v /= base;
  } while (v);
  int prefix = negative + (alt && base == 16 ? 2 : 0);
  if (!zero)
    for (int i = n + prefix; i < width; ++i) put(o, ' ');
  if (negative) put(o, '-');
  if (alt && base == 16) {
    put(o, '0');
    put(o, 'x');
  }
  if (zero)
    for (int i = n + prefix; i < width; ++i) put(o, '0');
  while (n) put(o, digits[--n]);
}

int rt_vsnprintf(char* buf, size_t size, const char* fmt, va_list ap) {
  struct out o = {buf, size, 0};
  for (; *fmt; ++fmt) {
    if (*fmt != '%') {
      put(&o, *fmt);
      continue;
    }
    ++fmt;
    int alt = 0, zero = 0, width = 0, longs = 0;
    if (*fmt == '#') alt = 1, ++fmt;
    if (*fmt == '0') zero = 1, ++fmt;
    while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
    while (*fmt == 'l') longs++, ++fmt;
    switch (*fmt) {
      case 'd':
      case 'i': {
        int64_t v = longs ? va_arg(ap, int64_t) : va_arg(ap, int);
        put_number(&o, v < 0 ? (uint64_t)-v : (uint64_t)v, 10, v < 0, width, zero, 0);
        break;
      }
      case 'u':
        put_number(&o, longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, 0, width, zero, 0);
        break;
      case 'x':
        put_number(&o, longs ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, 0, width, zero,
                   alt);
        break;
      case 'p':
        put_number(&o, (uint64_t)va_arg(ap, void*), 16, 0, width, zero, 1);
        break;
      case 's': {
        const char* s = va_arg(ap, const char*);
        if (!s) s = "(null)";
        size_t n = strlen(s);
        for (int i = (int)n; i < width; ++i) put(&o, ' ');
        while (*s) put(&o, *s++);
        break;
      }
      case 'c':
        put(&o, (char)va_arg(ap, int));
        break;
      case '%':
        put(&o, '%');
        break;
      default:
        put(&o, '%');
        if (*fmt)
          put(&o, *fmt);
        else
          --fmt;
    }
  }
  if (size) buf[o.len < size ? o.len : size - 1] = 0;
  return (int)o.len;
}

int rt_snprintf(char* buf, size_t size, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = rt_vsnprintf(buf, size, fmt, ap);
  va_end(ap);
  return n;
}

/* ---- COM1 ---- */
static volatile int console_lock;

void rt_serial_init(void) {
  rt_outb(COM1 + 1, 0x00); /* no interrupts: the guests poll */
  rt_outb(COM1 + 3, 0x80); /* DLAB */
  rt_outb(COM1 + 0, 0x01); /* 115200 baud */
  rt_outb(COM1 + 1, 0x00);
  rt_outb(COM1 + 3, 0x03); /* 8N1 */
  rt_outb(COM1 + 2, 0x07); /* FIFOs on and cleared */
  rt_outb(COM1 + 4, 0x03); /* DTR | RTS */
}

/* One status read per 16 bytes: once the transmitter is empty its FIFO takes 16 bytes. Each port
 * access is a VM exit, so this halves the exits of a naive per-byte poll. */
static void transmit(uint8_t c, int* fifo_room) {
  if (*fifo_room == 0) {
    while (!(rt_inb(COM1 + 5) & 0x20)) {
    }
    *fifo_room = 16;
  }
  rt_outb(COM1, c);
  --*fifo_room;
}

void rt_serial_write_unlocked(const char* s, size_t n) {
  int fifo_room = 0;
  for (size_t i = 0; i < n; ++i) {
    if (s[i] == '\n') transmit('\r', &fifo_room);
    transmit((uint8_t)s[i], &fifo_room);
  }
}

void rt_serial_write(const char* s, size_t n) {
  if (!rt_in_ring0()) {
    rt_syscall2(RT_SYS_WRITE, (uint64_t)s, n);
    return;
  }
  while (__atomic_exchange_n(&console_lock, 1, __ATOMIC_ACQUIRE)) __asm__ volatile("pause");
  rt_serial_write_unlocked(s, n);
  __atomic_store_n(&console_lock, 0, __ATOMIC_RELEASE);
}

void rt_printf(const char* fmt, ...) {
  char line[256];
  va_list ap;
  va_start(ap, fmt);
  int n = rt_vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (n > (int)sizeof(line) - 1) n = sizeof(line) - 1;
  rt_serial_write(line, (size_t)n);
}

size_t rt_serial_read(char* buf, size_t size) {
  if (!rt_in_ring0()) return rt_syscall2(RT_SYS_READ, (uint64_t)buf, size);
  size_t n = 0;
  while (n < size && (rt_inb(COM1 + 5) & 0x01)) buf[n++] = (char)rt_inb(COM1);
  return n;
}

void rt_exit(uint32_t status) {
  if (!rt_in_ring0()) rt_syscall(RT_SYS_EXIT, status);
  rt_outl(DEBUG_EXIT_PORT, status);
  /* Without a debug-exit device (a VMM that lacks one) there is nothing better than idling. */
  for (;;) __asm__ volatile("pause");
}

/* ---- command line ---- */
uint64_t rt_parse_number(const char* s) {
  uint64_t v = 0;
  unsigned base = 10;
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) base = 16, s += 2;
  for (;; ++s) {
    unsigned d;
    if (*s >= '0' && *s <= '9')
      d = (unsigned)(*s - '0');
    else if (base == 16 && *s >= 'a' && *s <= 'f')
      d = (unsigned)(*s - 'a' + 10);
    else if (base == 16 && *s >= 'A' && *s <= 'F')
      d = (unsigned)(*s - 'A' + 10);
    else
      break;
    v = v * base + d;
  }
  return v;
}

uint64_t rt_arg(const char* name, uint64_t fallback) {
  size_t len = strlen(name);
  const char* p = rt_cmdline;
  while (*p) {
    while (*p == ' ') ++p;
    if (strncmp(p, name, len) == 0 && p[len] == '=') return rt_parse_number(p + len + 1);
    while (*p && *p != ' ') ++p;
  }
  return fallback;
}

/* ---- console input (polled: each status read is one exit, done once per tick) ---- */
static char input[256];
static size_t input_len;

static char pending[64];
static size_t pending_len, pending_pos;

int rt_poll_line(char* line, size_t size) {
  for (;;) {
    if (pending_pos == pending_len) {
      pending_len = rt_serial_read(pending, sizeof(pending));
      pending_pos = 0;
      if (pending_len == 0) return 0;
    }
    char c = pending[pending_pos++];
    if (c != '\n' && c != '\r') {
      if (input_len + 1 < sizeof(input)) input[input_len++] = c;
      continue;
    }
    if (input_len == 0) continue;
    input[input_len] = 0;
    input_len = 0;
    if (strncmp(input, "exit ", 5) == 0) rt_exit((uint32_t)rt_parse_number(input + 5));
    if (strncmp(input, "crash", 6) == 0) {
      rt_printf("crash: jumping to guest-physical 0xe0000000 (no RAM there)\n");
      __asm__ volatile("jmp *%0" ::"r"(0xe0000000ul));
    }
    size_t n = strlen(input);
    if (n + 1 > size) n = size - 1;
    memcpy(line, input, n);
    line[n] = 0;
    return 1;
  }
}
