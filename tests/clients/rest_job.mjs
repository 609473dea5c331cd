// Drive a gpjobs GP task with @esri/arcgis-rest-request's Job helper, unchanged.
// usage: node rest_job.mjs <taskUrl> <token|""> '<params json>' [<result name, default out_item>]
// Prints one JSON line: {id, status, statuses, results, result, messages} or {error, ...}; exit 1 on failure.
// HTTPS: pass the server's certificate in NODE_EXTRA_CA_CERTS (full verification, no insecure flag).
import { Job, JOB_STATUSES } from "@esri/arcgis-rest-request";

const [taskUrl, token, paramsJson, resultName = "out_item"] = process.argv.slice(2);
const statuses = [];
let job;
try {
  job = await Job.submitJob({
    url: taskUrl,
    params: JSON.parse(paramsJson),
    authentication: token || undefined,
    pollingRate: 500,
  });
  // The first status read is not emitted as an event, and the internal monitor polls every 5 s: record
  // one read by hand so that a run shorter than that still shows whether it was seen executing.
  statuses.push((await job.getJobInfo()).status);
  job.on(JOB_STATUSES.Status, (info) => {
    if (statuses[statuses.length - 1] !== info.status) statuses.push(info.status);
  });
  const info = await job.waitForCompletion();
  const results = await job.getAllResults();
  const result = await job.getResult(resultName);
  console.log(JSON.stringify({ id: job.id, status: info.status, statuses, results, out_item: result, result,
                               messages: info.messages }));
} catch (err) {
  console.log(JSON.stringify({ error: String(err && err.message || err), name: err && err.name,
                               code: err && err.code, response: err && err.response,
                               id: job && job.id, statuses }));
  process.exit(1);
}
