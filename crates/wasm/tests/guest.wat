;; The test guest: one wasi:http/proxy component whose behaviour depends on the path.
;;   /trap       traps (unreachable) before answering
;;   /loop       never returns
;;   /bomb       grows its memory until refused, then traps
;;   /echo       answers 200 and streams the request body back, chunk by chunk
;;   /greet      answers the value of the GREETING environment variable
;;   /count      answers how many requests this instance has served (1 unless reused)
;;   /out/HOST   sends GET http://HOST/ and answers 200 (got a response), 403 (denied) or 502
;;   /slow?ms=N  waits N milliseconds on a host clock (not spinning), then answers "slow done"
;;   /drain      reads the whole request body, then answers its length (traps if reading fails)
;;   /print      writes 128 MiB without a newline to stdout and 5,000 lines to stderr, then
;;               answers "printed"
;;   /nothing    returns without answering, keeping its response-outparam (as a
;;               componentize-js guest does when it throws on a reused instance)
;;   anything else: 200 "hello from wasm"
(module
  (import "wasi:http/types@0.2.12" "[constructor]fields" (func $fields.new (result i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-response" (func $response.new (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.set-status-code" (func $response.status (param i32 i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.body" (func $response.body (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-body.write" (func $body.write (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]outgoing-body.finish" (func $body.finish (param i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]response-outparam.set"
    (func $outparam.set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-request.path-with-query" (func $request.path (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-request.consume" (func $request.consume (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-body.stream" (func $incoming.stream (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-request" (func $outreq.new (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-request.set-scheme" (func $outreq.scheme (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-request.set-authority" (func $outreq.authority (param i32 i32 i32 i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-request.set-path-with-query" (func $outreq.path (param i32 i32 i32 i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]future-incoming-response.subscribe" (func $future.subscribe (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]future-incoming-response.get" (func $future.get (param i32 i32)))
  (import "wasi:http/outgoing-handler@0.2.12" "handle" (func $http.send (param i32 i32 i32 i32)))
  (import "wasi:io/poll@0.2.12" "[method]pollable.block" (func $pollable.block (param i32)))
  (import "wasi:io/streams@0.2.12" "[method]input-stream.blocking-read" (func $in.read (param i32 i64 i32)))
  (import "wasi:io/streams@0.2.12" "[method]output-stream.blocking-write-and-flush" (func $out.write (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]output-stream" (func $out.drop (param i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]input-stream" (func $in.drop (param i32)))
  (import "wasi:cli/environment@0.2.12" "get-environment" (func $env.get (param i32)))
  (import "wasi:clocks/monotonic-clock@0.2.12" "subscribe-duration" (func $clock.after (param i64) (result i32)))
  (import "wasi:cli/stdout@0.2.12" "get-stdout" (func $stdout.get (result i32)))
  (import "wasi:cli/stderr@0.2.12" "get-stderr" (func $stderr.get (result i32)))

  (memory (export "memory") 1)
  ;; 0..128: results the host writes (retptr); 256..1024: constants; 4096..: the heap.
  (data (i32.const 256) "hello from wasm")
  (data (i32.const 272) "GREETING")
  (data (i32.const 288) "no GREETING")
  (data (i32.const 300) "/")
  (data (i32.const 304) "slow done")
  (data (i32.const 360) "line\n")
  (data (i32.const 368) "printed")

  (global $heap (mut i32) (i32.const 4096))
  (global $served (mut i32) (i32.const 0))

  (func $realloc (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get $align))))
    (global.set $heap (i32.add (local.get $p) (local.get $size)))
    (block $fits
      (br_if $fits (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
      (if (i32.eq (i32.const -1)
            (memory.grow (i32.add (i32.shr_u (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1))))
        (then unreachable)))
    (local.get $p))

  ;; Sends the response head (status, no headers) and returns the body's output stream;
  ;; the outgoing-body handle is left in $body_handle for $finish.
  (global $body_handle (mut i32) (i32.const 0))
  (func $start (param $outparam i32) (param $status i32) (result i32)
    (local $response i32)
    (local.set $response (call $response.new (call $fields.new)))
    (drop (call $response.status (local.get $response) (local.get $status)))
    (call $response.body (local.get $response) (i32.const 0))
    (global.set $body_handle (i32.load (i32.const 4)))
    (call $body.write (global.get $body_handle) (i32.const 0))
    (call $outparam.set (local.get $outparam) (i32.const 0) (local.get $response)
      (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (i32.load (i32.const 4)))

  (func $finish (param $stream i32)
    (call $out.drop (local.get $stream))
    (call $body.finish (global.get $body_handle) (i32.const 0) (i32.const 0) (i32.const 64)))

  (func $respond (param $outparam i32) (param $status i32) (param $ptr i32) (param $len i32)
    (local $stream i32)
    (local.set $stream (call $start (local.get $outparam) (local.get $status)))
    (if (local.get $len)
      (then (call $out.write (local.get $stream) (local.get $ptr) (local.get $len) (i32.const 32))))
    (call $finish (local.get $stream)))

  (func $eq (param $a i32) (param $alen i32) (param $b i32) (param $blen i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $alen) (local.get $blen)) (then (return (i32.const 0))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $alen)))
        (if (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                    (i32.load8_u (i32.add (local.get $b) (local.get $i))))
          (then (return (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 1))

  (func $echo (param $request i32) (param $outparam i32)
    (local $in i32) (local $out i32) (local $mark i32)
    (call $request.consume (local.get $request) (i32.const 0))
    (call $incoming.stream (i32.load (i32.const 4)) (i32.const 0))
    (local.set $in (i32.load (i32.const 4)))
    (local.set $out (call $start (local.get $outparam) (i32.const 200)))
    (block $closed
      (loop $chunk
        (local.set $mark (global.get $heap))
        (call $in.read (local.get $in) (i64.const 65536) (i32.const 0))
        (br_if $closed (i32.load8_u (i32.const 0)))
        ;; blocking-write-and-flush takes at most 4096 bytes at a time
        (call $write_all (local.get $out) (i32.load (i32.const 4)) (i32.load (i32.const 8)))
        (global.set $heap (local.get $mark))
        (br $chunk)))
    (call $in.drop (local.get $in))
    (call $finish (local.get $out)))

  (func $write_all (param $out i32) (param $ptr i32) (param $len i32)
    (local $n i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (local.set $n (select (i32.const 4096) (local.get $len) (i32.gt_u (local.get $len) (i32.const 4096))))
        (call $out.write (local.get $out) (local.get $ptr) (local.get $n) (i32.const 32))
        (local.set $ptr (i32.add (local.get $ptr) (local.get $n)))
        (local.set $len (i32.sub (local.get $len) (local.get $n)))
        (br $more))))

  (func $greet (param $outparam i32)
    (local $list i32) (local $count i32) (local $i i32) (local $e i32)
    (call $env.get (i32.const 0))
    (local.set $list (i32.load (i32.const 0)))
    (local.set $count (i32.load (i32.const 4)))
    (block $missing
      (loop $next
        (br_if $missing (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $e (i32.add (local.get $list) (i32.mul (local.get $i) (i32.const 16))))
        (if (call $eq (i32.load (local.get $e)) (i32.load offset=4 (local.get $e)) (i32.const 272) (i32.const 8))
          (then
            (call $respond (local.get $outparam) (i32.const 200) (i32.load offset=8 (local.get $e)) (i32.load offset=12 (local.get $e)))
            (return)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $respond (local.get $outparam) (i32.const 404) (i32.const 288) (i32.const 11)))

  ;; Writes $n in decimal below 352 and answers it.
  (func $count (param $outparam i32) (param $n i32)
    (local $end i32) (local $p i32)
    (local.set $end (i32.const 352))
    (local.set $p (local.get $end))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digit (local.get $n)))
    (call $respond (local.get $outparam) (i32.const 200) (local.get $p) (i32.sub (local.get $end) (local.get $p))))

  ;; GET http://{authority}/ and answer by outcome.
  (func $out (param $outparam i32) (param $host i32) (param $len i32)
    (local $req i32) (local $future i32) (local $pollable i32)
    (local.set $req (call $outreq.new (call $fields.new)))
    ;; some(scheme::HTTP)
    (drop (call $outreq.scheme (local.get $req) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0)))
    (drop (call $outreq.authority (local.get $req) (i32.const 1) (local.get $host) (local.get $len)))
    (drop (call $outreq.path (local.get $req) (i32.const 1) (i32.const 300) (i32.const 1)))
    (call $http.send (local.get $req) (i32.const 0) (i32.const 0) (i32.const 0))
    (if (i32.load8_u (i32.const 0))
      (then (call $respond (local.get $outparam) (i32.const 502) (i32.const 0) (i32.const 0)) (return)))
    (local.set $future (i32.load (i32.const 8)))
    (local.set $pollable (call $future.subscribe (local.get $future)))
    (call $pollable.block (local.get $pollable))
    ;; option<result<result<incoming-response, error-code>>>: tags at 0, 8, 16; payload at 24
    (call $future.get (local.get $future) (i32.const 0))
    (if (i32.eqz (i32.load8_u (i32.const 16)))
      (then (call $respond (local.get $outparam) (i32.const 200) (i32.const 0) (i32.const 0)) (return)))
    ;; error-code 15: HTTP-request-denied
    (if (i32.eq (i32.load8_u (i32.const 24)) (i32.const 15))
      (then (call $respond (local.get $outparam) (i32.const 403) (i32.const 0) (i32.const 0)) (return)))
    (call $respond (local.get $outparam) (i32.const 502) (i32.const 0) (i32.const 0)))

;; Waits for the number made of the digits in the path, in milliseconds.
  (func $slow (param $outparam i32) (param $path i32) (param $len i32)
    (local $i i32) (local $d i32) (local $ms i64)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $d (i32.sub (i32.load8_u (i32.add (local.get $path) (local.get $i))) (i32.const 48)))
        (if (i32.lt_u (local.get $d) (i32.const 10))
          (then (local.set $ms (i64.add (i64.mul (local.get $ms) (i64.const 10)) (i64.extend_i32_u (local.get $d))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $pollable.block (call $clock.after (i64.mul (local.get $ms) (i64.const 1000000))))
    (call $respond (local.get $outparam) (i32.const 200) (i32.const 304) (i32.const 9)))

;; Reads the request body to its end and answers how many bytes it had.
  (func $drain (param $request i32) (param $outparam i32)
    (local $in i32) (local $n i32) (local $mark i32)
    (call $request.consume (local.get $request) (i32.const 0))
    (call $incoming.stream (i32.load (i32.const 4)) (i32.const 0))
    (local.set $in (i32.load (i32.const 4)))
    (block $closed
      (loop $chunk
        (local.set $mark (global.get $heap))
        (call $in.read (local.get $in) (i64.const 65536) (i32.const 0))
        ;; result<list<u8>, stream-error>: tag at 0; ok: length at 8; err: 0 = failed, 1 = closed at 4
        (if (i32.load8_u (i32.const 0))
          (then
            (br_if $closed (i32.load8_u (i32.const 4)))
            unreachable))
        (local.set $n (i32.add (local.get $n) (i32.load (i32.const 8))))
        (global.set $heap (local.get $mark))
        (br $chunk)))
    (call $in.drop (local.get $in))
    (call $count (local.get $outparam) (local.get $n)))

  ;; 128 MiB of "x" on stdout in 4 KiB writes, one newline, then 5,000 short lines on stderr.
  (func $print (param $outparam i32)
    (local $out i32) (local $buf i32) (local $i i32)
    (local.set $buf (call $realloc (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 4096)))
    (memory.fill (local.get $buf) (i32.const 120) (i32.const 4096))
    (local.set $out (call $stdout.get))
    (block $done
      (loop $more
        (br_if $done (i32.ge_u (local.get $i) (i32.const 32768)))
        (call $out.write (local.get $out) (local.get $buf) (i32.const 4096) (i32.const 32))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $more)))
    (call $out.write (local.get $out) (i32.const 364) (i32.const 1) (i32.const 32))
    (call $out.drop (local.get $out))
    (local.set $out (call $stderr.get))
    (local.set $i (i32.const 0))
    (block $done
      (loop $more
        (br_if $done (i32.ge_u (local.get $i) (i32.const 5000)))
        (call $out.write (local.get $out) (i32.const 360) (i32.const 5) (i32.const 32))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $more)))
    (call $out.drop (local.get $out))
    (call $respond (local.get $outparam) (i32.const 200) (i32.const 368) (i32.const 7)))

  (func (export "wasi:http/incoming-handler@0.2.12#handle") (param $request i32) (param $outparam i32)
    (local $path i32) (local $len i32) (local $c i32)
    (global.set $served (i32.add (global.get $served) (i32.const 1)))
    ;; option<string>: tag at 0, pointer at 4, length at 8
    (call $request.path (local.get $request) (i32.const 0))
    (local.set $path (i32.load (i32.const 4)))
    (local.set $len (i32.load (i32.const 8)))
    (if (i32.ge_u (local.get $len) (i32.const 2))
      (then (local.set $c (i32.load8_u offset=1 (local.get $path)))))
    (if (i32.eq (local.get $c) (i32.const 116)) ;; t
      (then unreachable))
    (if (i32.eq (local.get $c) (i32.const 108)) ;; l
      (then (loop $forever (br $forever))))
    (if (i32.eq (local.get $c) (i32.const 98)) ;; b
      (then
        (loop $grow
          (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable))
          (br $grow))))
    (if (i32.eq (local.get $c) (i32.const 101)) ;; e
      (then (call $echo (local.get $request) (local.get $outparam)) (return)))
    (if (i32.eq (local.get $c) (i32.const 103)) ;; g
      (then (call $greet (local.get $outparam)) (return)))
    (if (i32.eq (local.get $c) (i32.const 99)) ;; c
      (then (call $count (local.get $outparam) (global.get $served)) (return)))
    (if (i32.eq (local.get $c) (i32.const 111)) ;; o: /out/HOST
      (then (call $out (local.get $outparam) (i32.add (local.get $path) (i32.const 5)) (i32.sub (local.get $len) (i32.const 5))) (return)))
    (if (i32.eq (local.get $c) (i32.const 100)) ;; d: /drain
      (then (call $drain (local.get $request) (local.get $outparam)) (return)))
    (if (i32.eq (local.get $c) (i32.const 112)) ;; p: /print
      (then (call $print (local.get $outparam)) (return)))
    (if (i32.eq (local.get $c) (i32.const 110)) ;; n: /nothing
      (then (return)))
    (if (i32.eq (local.get $c) (i32.const 115)) ;; s: /slow?ms=N
      (then (call $slow (local.get $outparam) (local.get $path) (local.get $len)) (return)))
    (call $respond (local.get $outparam) (i32.const 200) (i32.const 256) (i32.const 15)))
)
