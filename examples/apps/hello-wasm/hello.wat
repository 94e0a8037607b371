;; A wasi:http/proxy component written by hand: answers every request with a greeting.
;; Build: `marina wasm build examples/apps/hello-wasm/hello.wat` (writes hello.wasm beside it).
;;
;; The imports are the canonical-ABI lowering of WASI 0.2 functions: resources are i32 handles,
;; results larger than one value are written to memory at the last argument ("retptr").
(module
  (import "wasi:http/types@0.2.12" "[constructor]fields" (func $fields.new (result i32)))
  (import "wasi:http/types@0.2.12" "[method]fields.append"
    (func $fields.append (param i32 i32 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-response" (func $response.new (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.body" (func $response.body (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-body.write" (func $body.write (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]outgoing-body.finish" (func $body.finish (param i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]response-outparam.set"
    (func $outparam.set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[resource-drop]incoming-request" (func $request.drop (param i32)))
  (import "wasi:io/streams@0.2.12" "[method]output-stream.blocking-write-and-flush"
    (func $stream.write (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]output-stream" (func $stream.drop (param i32)))

  (memory (export "memory") 1)
  ;; 0..64: scratch for results written by the host.
  (data (i32.const 64) "content-type")
  (data (i32.const 80) "text/plain; charset=utf-8")
  (data (i32.const 128) "hello from a wasm component\0a")

  ;; The host allocates here for values it returns (lists, strings); nothing is ever freed,
  ;; which is fine for an instance that lives for one request.
  (global $heap (mut i32) (i32.const 4096))
  (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get $align))))
    (global.set $heap (i32.add (local.get $p) (local.get $size)))
    (block $fits
      (br_if $fits (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
      (drop (memory.grow (i32.add (i32.shr_u (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1)))))
    (local.get $p))

  (func (export "wasi:http/incoming-handler@0.2.12#handle") (param $request i32) (param $outparam i32)
    (local $headers i32) (local $response i32) (local $body i32) (local $stream i32)
    (call $request.drop (local.get $request))
    (local.set $headers (call $fields.new))
    (call $fields.append (local.get $headers) (i32.const 64) (i32.const 12) (i32.const 80) (i32.const 25) (i32.const 0))
    (local.set $response (call $response.new (local.get $headers)))
    ;; result<outgoing-body>: tag at 0, handle at 4
    (call $response.body (local.get $response) (i32.const 0))
    (local.set $body (i32.load (i32.const 4)))
    (call $body.write (local.get $body) (i32.const 0))
    (local.set $stream (i32.load (i32.const 4)))
    ;; ok(response): the head goes out now; the body streams after it
    (call $outparam.set (local.get $outparam) (i32.const 0) (local.get $response)
      (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $stream.write (local.get $stream) (i32.const 128) (i32.const 28) (i32.const 0))
    (call $stream.drop (local.get $stream))
    (call $body.finish (local.get $body) (i32.const 0) (i32.const 0) (i32.const 0)))
)
