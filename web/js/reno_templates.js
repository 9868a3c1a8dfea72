// The order of the pack's workflow templates. ComfyUI lists a pack's workflows by file name (GET
// /api/workflow_templates -> {pack folder: [name, ...]}) in the order its glob finds the files, i.e. the file system's
// order, and the template browser keeps it. Our workflows are named "ReNO NN <title>" (NN: 01 is the one to start
// with): sorting our own list by name, numbers as numbers, shows them in that order everywhere. No ComfyUI imports.

/** `index` with the list of `module` (the pack's folder under custom_nodes) sorted by name; everything else as is. */
export function sortPackTemplates(index, module) {
  if (!index || typeof index !== "object" || Array.isArray(index)) return index;
  const own = index[module];
  if (!Array.isArray(own)) return index;
  const sorted = [...own].sort((a, b) => String(a).localeCompare(String(b), "en", { numeric: true }));
  return { ...index, [module]: sorted };
}

/** The pack's folder name, from the URL the extension was served at (/extensions/<folder>/js/<file>.js). */
export function packFolder(url) {
  try {
    const parts = new URL(url).pathname.split("/");
    const i = parts.indexOf("extensions");
    return i >= 0 && parts[i + 1] ? decodeURIComponent(parts[i + 1]) : null;
  } catch {
    return null;
  }
}

/** Wraps `api.getWorkflowTemplates` (what the template browser calls) so the pack's own list comes sorted. */
export function installTemplateOrder(api, module) {
  const get = api?.getWorkflowTemplates;
  if (typeof get !== "function" || !module || get.renoSorted) return false;
  const sorted = async function () {
    return sortPackTemplates(await get.apply(this, arguments), module);
  };
  sorted.renoSorted = true;
  api.getWorkflowTemplates = sorted;
  return true;
}
