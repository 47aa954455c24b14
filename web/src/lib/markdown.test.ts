import { describe, expect, it } from 'vitest';
import { renderMarkdown } from './markdown';

function dom(html: string): HTMLElement {
  const root = document.createElement('div');
  root.innerHTML = html;
  return root;
}

describe('renderMarkdown', () => {
  it('neutralises an <img onerror> and a <script> in model output', () => {
    const root = dom(renderMarkdown('Voici <img src=x onerror=alert(1)> et <script>alert(2)</script> fin'));
    expect(root.querySelector('script')).toBeNull();
    expect(root.querySelector('img')).toBeNull();
    expect(root.innerHTML).not.toMatch(/onerror|<script|alert\(2\)/);
    expect(root.textContent).toContain('fin');
  });

  it('fetches no image a model names, inline or as Markdown', () => {
    const root = dom(renderMarkdown('![pixel](https://tracker.example/p.gif) and <img src="https://tracker.example/q.gif">'));
    expect(root.querySelector('img, picture, source')).toBeNull();
    expect(root.innerHTML).not.toContain('tracker.example');
  });

  it('lets no page-wide style, class, form, SVG or image button through', () => {
    const root = dom(
      renderMarkdown(
        [
          '<style>*{display:none!important}</style>',
          '<div class="fixed inset-0 z-50 bg-white" id="fake">Collez votre jeton</div>',
          '<form action="/x"><input name="token"><button>OK</button></form>',
          '<svg><image href="https://tracker.example/s.png"></image></svg>',
          '<input type="image" src="https://tracker.example/i.png">',
          '<math><mi>x</mi></math>',
        ].join('\n\n'),
      ),
    );
    expect(root.querySelector('style, form, button, svg, image, math, [class], [id]')).toBeNull();
    expect(root.querySelector('input')).toBeNull();
    expect(root.innerHTML).not.toContain('tracker.example');
    expect(root.textContent).toContain('Collez votre jeton'); // the text stays, as text
  });

  it('keeps a task list as disabled checkboxes', () => {
    const root = dom(renderMarkdown('- [x] convoquer l’AG\n- [ ] voter le budget'));
    const boxes = [...root.querySelectorAll('input')];
    expect(boxes).toHaveLength(2);
    expect(boxes.every((b) => b.type === 'checkbox' && b.disabled)).toBe(true);
  });

  it('drops javascript: links and style attributes', () => {
    const root = dom(renderMarkdown('[clic](javascript:alert(1)) <span style="color:red">rouge</span>'));
    expect(root.querySelector('a')?.getAttribute('href') ?? null).toBeNull();
    expect(root.querySelector('[style]')).toBeNull();
    expect(root.textContent).toContain('rouge');
  });

  it('renders code blocks as <pre><code>, with their text escaped', () => {
    const root = dom(renderMarkdown('```python\nprint("<b>hi</b>")\n```'));
    const code = root.querySelector('pre > code');
    expect(code).not.toBeNull();
    expect(code?.textContent).toBe('print("<b>hi</b>")\n');
    expect(root.querySelector('b')).toBeNull();
  });

  it('opens links in a new tab without handing over the opener', () => {
    const link = dom(renderMarkdown('Voir [le PV](https://example.org/pv.pdf)')).querySelector('a');
    expect(link?.getAttribute('href')).toBe('https://example.org/pv.pdf');
    expect(link?.getAttribute('target')).toBe('_blank');
    expect(link?.getAttribute('rel')).toBe('noopener noreferrer');
  });

  it('keeps GFM tables and single line breaks', () => {
    const root = dom(renderMarkdown('| lot | quote-part |\n|---|---|\n| A | 120 |\n\nligne 1\nligne 2'));
    expect(root.querySelector('table td')?.textContent).toBe('A');
    expect(root.querySelector('p br')).not.toBeNull();
  });
});
