import type { Translation } from '..';
import type { stats as reference } from '../fr/stats';

export const stats: Translation<typeof reference> = {};
