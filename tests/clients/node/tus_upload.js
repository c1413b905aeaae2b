// Uploads a file to Ferry with tus-js-client (npm), cut part-way and resumed by its upload URL.
//
//   node tus_upload.js ENDPOINT FILE PROTOCOL TOKEN ABORT_AT METADATA_JSON
//
// PROTOCOL is 'tus-v1' or 'ietf-draft-05'. The first upload is aborted (its PATCH cut mid-body)
// once ABORT_AT bytes were sent; the script prints {"url": ...} and waits for a line on stdin, then
// resumes with `uploadUrl` (HEAD for the offset, PATCHes from there) and prints {"done": ..., "from": ...}.
'use strict'

const fs = require('fs')
const readline = require('readline')
const tus = require('tus-js-client')

const [endpoint, file, protocol, token, abortAt, metadata] = process.argv.slice(2)
const data = fs.readFileSync(file)
const options = {
  endpoint,
  protocol,
  chunkSize: 256 * 1024,
  metadata: JSON.parse(metadata),
  headers: { Authorization: `Bearer ${token}` },
  retryDelays: [100, 300, 1000, 2000, 4000, 8000],
  removeFingerprintOnSuccess: true,
}

function say(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`)
}

function fail(error) {
  process.stderr.write(`${error && error.stack ? error.stack : error}\n`)
  process.exit(1)
}

const first = new tus.Upload(data, {
  ...options,
  onProgress(sent) {
    if (sent >= Number(abortAt) && !first.stopped) {
      first.stopped = true
      first.abort(false).then(() => say({ url: first.url, sent }), fail) // the upload is kept
    }
  },
  onError: fail,
  onSuccess() {
    fail(new Error('the first upload finished before it was aborted'))
  },
})
first.start()

readline.createInterface({ input: process.stdin }).once('line', () => {
  let from = null
  const resumed = new tus.Upload(data, {
    ...options,
    uploadUrl: first.url,
    onProgress(sent) {
      if (from === null) from = sent
    },
    onError: fail,
    onSuccess() {
      say({ done: resumed.url, from })
      process.exit(0)
    },
  })
  resumed.start()
})
