// hub_js.mjs: snapshotDownload of npm's @huggingface/hub (an independent writer of the Hugging
// Face cache layout, the same as the Python tools') for tests/test_hub_js.sh.
//
//   node hub_js.mjs ENDPOINT CACHE_DIR REPO REVISION     prints the snapshot folder
//
// The test hub is static files, so the one POST of the protocol (paths-info: the blob id and
// size of one path) is turned into a GET of a file holding that answer.
const dir = process.env.HUB_JS_DIR;
const { snapshotDownload } = await import(`${dir}/node_modules/@huggingface/hub/dist/index.mjs`);
const [endpoint, cacheDir, repo, revision] = process.argv.slice(2);

const staticFetch = (url, init) => {
	if (init && init.method === "POST" && String(url).includes("/paths-info/")) {
		const { paths } = JSON.parse(init.body);
		if (paths.length !== 1) throw new Error("the test hub answers paths-info for one path at a time");
		return fetch(`${url}/${paths[0]}`, { headers: init.headers });
	}
	return fetch(url, init);
};

const out = await snapshotDownload({ repo, revision, cacheDir, hubUrl: endpoint, fetch: staticFetch });
console.log(out);
