// Wake-up floors without shmbus: two processes (pinned to CPUs 0 and 1) ping-pong 20,000
// times, each blocking until woken, through (0) a futex on shared memory, (1) a blocking
// eventfd read, (2) a Unix stream socket. Prints p50/p99 of the round trip.
//   gcc -O2 -o /tmp/wake_floor compare/tools/wake_floor.c && for m in 0 1 2; do /tmp/wake_floor $m; done
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <unistd.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <stdatomic.h>
#include <sys/wait.h>
static long fx(atomic_int *a, int op, int v){ return syscall(SYS_futex, a, op, v, NULL, NULL, 0); }
static void pin(int c){ cpu_set_t s; CPU_ZERO(&s); CPU_SET(c,&s); sched_setaffinity(0,sizeof s,&s); }
static uint64_t now(){ struct timespec t; clock_gettime(CLOCK_MONOTONIC,&t); return t.tv_sec*1000000000ull+t.tv_nsec; }
static int cmp(const void*a,const void*b){ uint64_t x=*(uint64_t*)a,y=*(uint64_t*)b; return x<y?-1:x>y; }
#define N 20000
int main(int argc,char**argv){
  int mode = atoi(argv[1]); // 0 futex, 1 eventfd read, 2 uds
  atomic_int *w = mmap(0,4096,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_ANONYMOUS,-1,0);
  atomic_int *a=&w[0], *b=&w[32];
  int e1=eventfd(0,0), e2=eventfd(0,0); int sv[2]; socketpair(AF_UNIX,SOCK_STREAM,0,sv);
  pid_t p=fork();
  if(p==0){ pin(1); uint64_t v; char c;
    for(int i=0;i<N;i++){
      if(mode==0){ while(atomic_load(a)==0) fx(a,FUTEX_WAIT,0); atomic_store(a,0); atomic_store(b,1); fx(b,FUTEX_WAKE,1);} 
      else if(mode==1){ read(e1,&v,8); v=1; write(e2,&v,8);} 
      else { read(sv[1],&c,1); write(sv[1],&c,1);} }
    _exit(0);}
  pin(0); static uint64_t lat[N]; uint64_t v; char c='x';
  for(int i=0;i<N;i++){ uint64_t t=now();
    if(mode==0){ atomic_store(a,1); fx(a,FUTEX_WAKE,1); while(atomic_load(b)==0) fx(b,FUTEX_WAIT,0); atomic_store(b,0);} 
    else if(mode==1){ v=1; write(e1,&v,8); read(e2,&v,8);} 
    else { write(sv[0],&c,1); read(sv[0],&c,1);} 
    lat[i]=now()-t; }
  waitpid(p,0,0); qsort(lat,N,8,cmp); printf("mode %d p50 %.1f us p99 %.1f\n",mode,lat[N/2]/1e3,lat[N*99/100]/1e3); }
