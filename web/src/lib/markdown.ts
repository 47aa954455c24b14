/**
 * Model output as safe HTML: `marked` (GitHub-flavoured, single newlines kept as <br>), then
 * DOMPurify allowing only Markdown's own elements and a link's attributes (no style, class, form,
 * SVG, image or media); every link opens in a new tab with
 * rel="noopener noreferrer". Model output is untrusted text: nothing reaches the page unsanitised.
 */
import createDOMPurify, { type DOMPurify } from 'dompurify';
import { Marked } from 'marked';

const markdown = new Marked({ gfm: true, breaks: true, async: false });

/** The elements `marked` writes for GitHub-flavoured Markdown, minus images. */
const MARKDOWN_TAGS = [
  'p', 'br', 'hr', 'em', 'strong', 'del', 'code', 'pre', 'blockquote', 'a',
  'ul', 'ol', 'li', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6',
  'table', 'thead', 'tbody', 'tr', 'th', 'td', 'input',
];
/** Links' address and title; `align` of table cells; a task list's disabled checkbox. */
const MARKDOWN_ATTRIBUTES = ['href', 'title', 'align', 'type', 'checked', 'disabled', 'start'];

let purifier: DOMPurify | null = null;

// One DOMPurify instance of our own, so its link hook never changes another module's sanitising.
function purify(): DOMPurify {
  if (purifier) return purifier;
  if (typeof window === 'undefined') throw new Error('renderMarkdown needs a DOM (it runs in the browser)');
  const instance = createDOMPurify(window);
  instance.addHook('afterSanitizeAttributes', (node) => {
    // `input` only as GFM's task-list checkbox (`- [x]`), never a field or an image button.
    if (node.tagName === 'INPUT' && (node.getAttribute('type') !== 'checkbox' || !node.hasAttribute('disabled'))) {
      node.remove();
      return;
    }
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
  // Only what Markdown itself produces, and no attribute beyond a link's target: no <style>, no
  // class (the page's own Tailwind classes would let an answer lay a fake form over the page), no
  // form, no SVG or MathML, and no image or media at all (a model's `![](https://…)` would make
  // the phone fetch any address the model wrote: a tracking pixel, a leak of who reads what).
  return purify().sanitize(html, { ALLOWED_TAGS: MARKDOWN_TAGS, ALLOWED_ATTR: MARKDOWN_ATTRIBUTES });
}
