/**
 * Model output as safe HTML: `marked` (GitHub-flavoured, single newlines kept as <br>), then
 * DOMPurify's default profile without `style` attributes nor media (no image is fetched); every link opens in a new tab with
 * rel="noopener noreferrer". Model output is untrusted text: nothing reaches the page unsanitised.
 */
import createDOMPurify, { type DOMPurify } from 'dompurify';
import { Marked } from 'marked';

const markdown = new Marked({ gfm: true, breaks: true, async: false });

let purifier: DOMPurify | null = null;

// One DOMPurify instance of our own, so its link hook never changes another module's sanitising.
function purify(): DOMPurify {
  if (purifier) return purifier;
  if (typeof window === 'undefined') throw new Error('renderMarkdown needs a DOM (it runs in the browser)');
  const instance = createDOMPurify(window);
  instance.addHook('afterSanitizeAttributes', (node) => {
    if (node.tagName === 'A' && node.hasAttribute('href')) {
      node.setAttribute('target', '_blank');
      node.setAttribute('rel', 'noopener noreferrer');
    }
  });
  purifier = instance;
  return instance;
}

/** `text` (Markdown from a model) as sanitised HTML. */
export function renderMarkdown(text: string): string {
  const html = markdown.parse(text) as string;
  // No images: a model's `![](https://…)` would make the phone fetch any address the model wrote
  // (a tracking pixel, a leak of who reads what), and carries no alt text worth the name.
  return purify().sanitize(html, { FORBID_ATTR: ['style'], FORBID_TAGS: ['img', 'picture', 'source', 'video', 'audio'] });
}
